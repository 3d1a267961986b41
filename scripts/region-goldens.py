#!/usr/bin/env python3
"""Golden outputs of Moondream's own code for moonwatch's region-head path.

Runs the reference (vikhyat/moondream at f660ccb, the 2025-04-14 release's code,
moondream/torch/*.py) on CPU in float32 on a random-weight checkpoint that moonwatch
wrote in the release's layout, and records what the test suite compares moonwatch with
(tests/region.rs): for each detect and point request the objects, every coordinate and
size bin with its margin over the runner-up, every end-of-text decision, and the hidden
state the first coordinate is read from; for the picture a few rows of the image
embeddings and the folded-projector check.

What is replaced, and why:
- the tokenizer (Tokenizer.from_pretrained needs the network): the object's token ids
  are given on the command line (GPT-2 ids of " " + object, as moonwatch computes them);
- the crops are normalized in float32 instead of float16 (the weights are float32, and
  torch will not multiply float16 pixels by float32 weights; llama.cpp normalizes in
  float32 too).
Nothing else: the vision encoder, the crop reconstruction, the projector, the two-way
prefix mask, the text model and `_generate_points` are the reference's own.

Regenerate (the numbers in tests/region.rs name the seed and end-of-text bias):
    python3 -m venv venv && venv/bin/pip install torch numpy pillow "pyvips[binary]" safetensors
    git clone https://github.com/vikhyat/moondream && git -C moondream checkout f660ccb
    moonwatch model synth --reference --eos-bias 6 --out /tmp/ref
    venv/bin/python scripts/region-goldens.py --moondream moondream --weights /tmp/ref \
        --image tests/data/region-scene.png --object " cat=3797" --object " dog=3290" \
        --out tests/data/region-goldens.json
The second, sharper checkpoint (tests/data/region-goldens-strong.json):
    moonwatch model synth --reference --eos-bias 0 --seed 7 --attention 64 \
        --text-width 192 --text-layers 3 --out /tmp/strong
    venv/bin/python scripts/region-goldens.py --moondream moondream --weights /tmp/strong \
        --image tests/data/region-scene.png --object " cat=3797" --object " dog=3290" \
        --out tests/data/region-goldens-strong.json
"""

import argparse
import json
import sys
import types


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moondream", required=True, help="checkout of vikhyat/moondream at f660ccb")
    ap.add_argument("--weights", required=True, help="directory with model.safetensors and config.json")
    ap.add_argument("--image", required=True,
                    help="a picture: 378x378 (one crop) or larger (the reference's overlap crops)")
    ap.add_argument("--object", action="append", required=True,
                    help='" name=id,id,..": an object and the GPT-2 ids of " name"')
    ap.add_argument("--query", action="append", default=[],
                    help='"question=id,id,..": a question and the GPT-2 ids of " question", '
                         'answered greedily (temperature 0) up to --max-tokens')
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ids = {}
    for spec in args.object:
        text, _, nums = spec.rpartition("=")
        ids[text] = [int(n) for n in nums.split(",")]
    questions = {}
    for spec in args.query:
        text, _, nums = spec.rpartition("=")
        questions[" " + text] = [int(n) for n in nums.split(",")]

    # The tokenizer step, replaced: encode(" " + object) gives the ids from the command line.
    class Encoded:
        def __init__(self, ids):
            self.ids = ids

    class Tokenizer:
        @staticmethod
        def from_pretrained(*_a, **_k):
            return Tokenizer()

        def encode(self, text):
            return Encoded(ids.get(text) or questions[text])

        def decode(self, tokens):
            # The answer's text is not needed (its token ids are recorded); no spaces or
            # newlines, so the reference's streaming holds everything to the end.
            return "".join(f"<{t}>" for t in tokens)

    sys.modules["tokenizers"] = types.SimpleNamespace(Tokenizer=Tokenizer)
    sys.path.insert(0, args.moondream)

    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from moondream.torch import moondream as md
    from moondream.torch import vision as vis
    from moondream.torch.config import MoondreamConfig
    from moondream.torch.layers import mlp

    torch.manual_seed(0)
    original_prepare = vis.prepare_crops

    def prepare_crops_f32(image, config, device):
        import numpy as np
        from moondream.torch.image_crops import overlap_crop_image

        crops = overlap_crop_image(np.array(image.convert("RGB")),
                                   max_crops=config.max_crops,
                                   overlap_margin=config.overlap_margin)
        all_crops = np.transpose(crops["crops"], (0, 3, 1, 2))
        t = torch.from_numpy(all_crops).to(device=device, dtype=torch.float32)
        return t.div_(255.0).sub_(0.5).div_(0.5), crops["tiling"]

    assert original_prepare is md.prepare_crops
    md.prepare_crops = prepare_crops_f32

    with open(f"{args.weights}/config.json") as f:
        config = MoondreamConfig.from_dict(json.load(f))
    model = md.MoondreamModel(config, dtype=torch.float32)
    state = {k.removeprefix("model."): v for k, v in load_file(f"{args.weights}/model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(".kv_cache." in k for k in missing), missing
    model.eval()

    image = Image.open(args.image).convert("RGB")

    # The folded projector: with one crop the reference's projector input is [g, g].
    # Larger pictures are cut into the reference's overlap crops; the tiling is recorded.
    with torch.inference_mode():
        crops, tiling = md.prepare_crops(image, config.vision, device="cpu")
        img_emb = model._run_vision_encoder(image)
        fold_diff = None
        if tuple(tiling) == (1, 1):
            g = model._vis_enc(crops)[0]
            fc1 = model.vision.proj_mlp.fc1
            n = config.vision.enc_dim
            folded = types.SimpleNamespace(
                fc1=lambda x: torch.nn.functional.linear(x, fc1.weight[:, :n] + fc1.weight[:, n:], fc1.bias),
                fc2=model.vision.proj_mlp.fc2,
            )
            fold_diff = (mlp(g, folded) - img_emb).abs().max().item()

    # Record the decisions: wrap the functions `_generate_points` calls.
    log = []

    def top2(v):
        s = torch.topk(v.flatten().float(), 2)
        return int(s.indices[0]), float(s.values[0] - s.values[1])

    dec_coord, dec_size, one_tok = md.decode_coordinate, md.decode_size, md.MoondreamModel._decode_one_tok

    def decode_coordinate(hidden, w):
        out = dec_coord(hidden, w)
        b, m = top2(out)
        log.append({"step": "coord", "bin": b, "margin": m})
        return out

    def decode_size(hidden, w):
        out = dec_size(hidden, w)
        wb, wm = top2(out[0])
        hb, hm = top2(out[1])
        log.append({"step": "size", "bins": [wb, hb], "margins": [wm, hm]})
        return out

    def decode_one_tok(self, x, mask, pos_ids):
        logits, hidden = one_tok(self, x, mask, pos_ids)
        t, m = top2(logits)
        log.append({"step": "token", "token": t, "margin": m, "pos": int(pos_ids[0])})
        return logits, hidden

    md.decode_coordinate, md.decode_size = decode_coordinate, decode_size
    md.MoondreamModel._decode_one_tok = decode_one_tok

    first_hidden = {}
    prefill = md.MoondreamModel._prefill_prompt

    def prefill_prompt(self, tokens, pos, temperature, top_p):
        logits, hidden, next_token, pos2 = prefill(self, tokens, pos, temperature, top_p)
        t, m = top2(logits)
        first_hidden["hidden"] = hidden[0, -1].tolist()
        first_hidden["first"] = {"step": "token", "token": t, "margin": m, "pos": pos2 - 1}
        first_hidden["prompt"] = tokens[0].tolist()
        return logits, hidden, next_token, pos2

    md.MoondreamModel._prefill_prompt = prefill_prompt

    requests = []
    with torch.inference_mode():
        encoded = model.encode_image(image)
        for skill in ["detect", "point"]:
            for text in ids:
                log.clear()
                result = getattr(model, skill)(encoded, text.strip())
                requests.append({
                    "skill": skill,
                    "object": text.strip(),
                    "prompt": first_hidden["prompt"],
                    "hidden": first_hidden["hidden"],
                    "steps": [first_hidden["first"]] + log,
                    "result": result,
                })

        for question in questions:
            log.clear()
            model.query(encoded, question.strip(),
                        settings={"temperature": 0, "max_tokens": args.max_tokens})
            steps = [first_hidden["first"]] + log
            requests.append({
                "skill": "query",
                "object": question.strip(),
                "prompt": first_hidden["prompt"],
                "hidden": first_hidden["hidden"],
                "steps": steps,
                "result": {"tokens": [s["token"] for s in steps]},
            })

    out = {
        "reference": "vikhyat/moondream f660ccb (moondream/torch), float32 on CPU",
        "weights": "moonwatch model synth --reference (see tests/region.rs)",
        "image": args.image,
        "size": list(image.size),
        "tiling": list(tiling),
        "fold_max_abs_diff": fold_diff,
        "image_embedding_rows": {str(r): img_emb[r].tolist() for r in (0, 364, 728)},
        "requests": requests,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for r in requests:
        n = len(r["result"].get("objects", r["result"].get("points", r["result"].get("tokens", []))))
        print(f'{r["skill"]} {r["object"]!r}: {n} objects, {len(r["steps"])} steps')
    if fold_diff is None:
        print(f"tiling {tuple(tiling)}: {1 + tiling[0] * tiling[1]} crops")
    else:
        print(f"folded projector max |diff| {fold_diff:.3g}")


if __name__ == "__main__":
    main()
