//! What the generation loop and the thinking controller need from a tokenizer. It sits
//! below both, so the controller stays a pure state machine over ids that tests drive with
//! a toy vocabulary.

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{0}")]
pub struct CodecError(pub String);

/// The tokenizer as the loop sees it (the real `Tokenizer` implements it; tests use a toy).
pub trait TextCodec {
    /// Text to ids, no BOS/EOS added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError>;
    /// Ids to text, special tokens rendered as their text (so `</think>` shows). A sequence
    /// that ends inside a multi-byte character ends with U+FFFD; the loop relies on that to
    /// hold such pieces back.
    fn decode(&self, ids: &[u32]) -> String;
    /// The id of `text` when it is exactly one token of the vocabulary (e.g. `<think>`).
    fn token_id(&self, text: &str) -> Option<u32>;
    /// Ids that end a response (EOS, `<|im_end|>`, `<|eot_id|>`, ...).
    fn end_of_generation_ids(&self) -> Vec<u32>;
}

/// A codec behind any pointer (`&T`, `Rc<T>`, `Box<T>`) is a codec.
impl<P: std::ops::Deref> TextCodec for P
where
    P::Target: TextCodec,
{
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        (**self).encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        (**self).decode(ids)
    }
    fn token_id(&self, text: &str) -> Option<u32> {
        (**self).token_id(text)
    }
    fn end_of_generation_ids(&self) -> Vec<u32> {
        (**self).end_of_generation_ids()
    }
}

/// The real tokenizer as the loop sees it.
impl TextCodec for crate::tokenizer::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        crate::tokenizer::Tokenizer::encode(self, text, false).map_err(|e| CodecError(e.to_string()))
    }
    fn decode(&self, ids: &[u32]) -> String {
        crate::tokenizer::Tokenizer::decode(self, ids)
    }
    fn token_id(&self, text: &str) -> Option<u32> {
        crate::tokenizer::Tokenizer::token_id(self, text)
    }
    fn end_of_generation_ids(&self) -> Vec<u32> {
        crate::tokenizer::Tokenizer::end_of_generation_ids(self).to_vec()
    }
}

