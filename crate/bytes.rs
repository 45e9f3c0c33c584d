//! Byte buffers with 8-byte alignment, so that GGML blocks (which contain f16/u32
//! fields) can be viewed as typed slices without copying.

/// An owned, 8-byte aligned byte buffer. Backed by `Vec<u64>`; `len` is the byte length.
#[derive(Clone, Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        Self { words: vec![0u64; len.div_ceil(8)], len }
    }

    /// Copy `bytes` into a new aligned buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    /// Append `bytes`, growing the allocation geometrically but never past `limit` bytes in
    /// total (the size the caller expects to end with): memory follows the bytes that really
    /// arrive, and a buffer filled to `limit` holds no slack.
    pub fn extend_within(&mut self, bytes: &[u8], limit: u64) {
        let new_len = self.len + bytes.len();
        let words = new_len.div_ceil(8);
        if words > self.words.capacity() {
            let limit_words = usize::try_from(limit.div_ceil(8)).unwrap_or(usize::MAX);
            let target = (self.words.capacity() * 2).max(words).min(limit_words.max(words));
            self.words.reserve_exact(target - self.words.len());
        }
        self.words.resize(words, 0);
        let len = self.len;
        self.len = new_len;
        self.as_mut_slice()[len..].copy_from_slice(bytes);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}
