//! GPT-2's tokenizer as Moondream uses it for user text (`r50k_base`, from `tiktoken-rs`):
//! the engine checks it against the model's vocabulary and splits questions with it; the
//! model tools write vocabularies and known answers with it.

use std::sync::OnceLock;

/// GPT-2's byte-level BPE exactly as Moondream was trained with (`r50k_base`), built once.
pub fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    static GPT2: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    GPT2.get_or_init(|| match tiktoken_rs::r50k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::warn!("GPT-2 tokenizer unavailable ({e}); using llama.cpp's");
            None
        }
    })
    .as_ref()
}

/// `text` as GPT-2 token ids, split by GPT-2's own rules (what Moondream's tokenizer
/// does for user text); `None` if the tokenizer could not be built.
pub fn ids(text: &str) -> Option<Vec<u32>> {
    bpe().map(|bpe| bpe.encode_ordinary(text))
}

/// The bytes of one GPT-2 token.
pub fn piece(id: u32) -> Option<Vec<u8>> {
    bpe().and_then(|bpe| bpe.decode_bytes(&[id]).ok())
}
