// Regenerates tests/data/gpt2-golden.json with an implementation independent of ours:
// npm install gpt-3-encoder@1.1.4 && node tests/data/gpt2-golden.js > tests/data/gpt2-golden.json
const {encode} = require('gpt-3-encoder');
const cases = [
  "\n\nQuestion: What's on the table?\n\nAnswer:",
  "\n\nQuestion: Is the door open? Answer yes or no.\n\nAnswer:",
  "\n\nQuestion: How many cars are there , really ?\n\nAnswer:",
  "\n\nQuestion: It's 12345 o'clock; they'll see 3.14159 cats!\n\nAnswer:",
  "\n\nQuestion: Wasn't I'd've it? don't WON'T\n\nAnswer:",
  "\n\nQuestion: café naïve 東京 😀 <|endoftext|>\n\nAnswer:",
  "\n\nQuestion: tabs\tand\nnewlines  two spaces\n\nAnswer:",
];
console.log(JSON.stringify(cases.map(c => ({text: c, ids: encode(c)})), null, 1));
