//! GGUF header parsing: real files and corrupt ones.

use pensive::gguf::{GgufError, GgufHeader, MetaValue};
use pensive::quant::GgmlType;

mod common;

/// Build a minimal GGUF v3 file: one metadata string and one F32 tensor of `n` floats.
fn tiny_gguf(n_tensors_declared: u64, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors_declared.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"w";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let n: u64 = dims.iter().fold(1u64, |a, d| a.saturating_mul(*d)).min(1024);
    b.extend(std::iter::repeat_n(0u8, (n * 4) as usize));
    b
}

#[test]
fn parses_a_well_formed_file() {
    let file = tiny_gguf(1, &[4, 2], 0, 0);
    let h = GgufHeader::parse(&file).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata.get_str("general.architecture"), Some("llama"));
    assert_eq!(h.tensors.len(), 1);
    assert_eq!(h.tensors[0].ty, GgmlType::F32);
    assert_eq!(h.tensors[0].n_bytes, 32);
    assert_eq!(h.data_offset % 32, 0);
    assert_eq!(h.implied_file_len(), file.len() as u64);
    h.check_bounds(file.len() as u64).unwrap();
}

#[test]
fn every_truncation_of_the_header_is_reported_as_truncated() {
    let file = tiny_gguf(1, &[4, 2], 0, 0);
    let full = GgufHeader::parse(&file).unwrap();
    for cut in 0..full.data_offset as usize - 31 {
        match GgufHeader::parse(&file[..cut]) {
            Err(GgufError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn wrong_magic_and_version_are_typed_errors() {
    let mut file = tiny_gguf(1, &[4], 0, 0);
    file[0] = b'X';
    assert!(matches!(GgufHeader::parse(&file), Err(GgufError::BadMagic(_))));
    let mut file = tiny_gguf(1, &[4], 0, 0);
    file[4] = 1;
    assert!(matches!(GgufHeader::parse(&file), Err(GgufError::UnsupportedVersion(1))));
}

#[test]
fn absurd_counts_do_not_allocate() {
    // 2^60 tensors declared: must be refused from the byte count, not by trying to reserve.
    let file = tiny_gguf(1 << 60, &[4], 0, 0);
    assert!(matches!(GgufHeader::parse(&file), Err(GgufError::Truncated { .. })));
    // A dimension product that overflows u64.
    let file = tiny_gguf(1, &[u64::MAX, 3], 0, 0);
    assert!(matches!(GgufHeader::parse(&file), Err(GgufError::Corrupt(_))));
}

#[test]
fn unknown_tensor_type_is_named() {
    let file = tiny_gguf(1, &[4], 99, 0);
    match GgufHeader::parse(&file) {
        Err(GgufError::UnsupportedTensorType { name, type_id }) => {
            assert_eq!((name.as_str(), type_id), ("w", 99));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tensor_past_the_end_is_reported() {
    let file = tiny_gguf(1, &[4], 0, 1 << 20);
    let h = GgufHeader::parse(&file).unwrap();
    assert!(matches!(
        h.check_bounds(file.len() as u64),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
}

#[test]
fn real_smollm2_header() {
    let Some(bytes) = common::model_bytes("smollm2-135m-instruct-q4_1.gguf") else { return };
    let h = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(h.metadata.get_str("general.architecture"), Some("llama"));
    assert_eq!(h.metadata.get_u32("llama.block_count"), Some(30));
    assert_eq!(h.metadata.get_u32("llama.embedding_length"), Some(576));
    let tokens = h.metadata.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert!(matches!(tokens[0], MetaValue::Str(_)));
    assert_eq!(h.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(h.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_1);
    assert!(h.tensor("output.weight").is_none(), "SmolLM2 ties its LM head");
    h.check_bounds(bytes.len() as u64).unwrap();
    assert_eq!(h.implied_file_len(), bytes.len() as u64);
}

#[test]
fn a_tensor_named_twice_is_corrupt() {
    let one = tiny_gguf(1, &[4], 0, 0);
    // After magic, version, the two counts and the one metadata entry (69 bytes): the tensor
    // info of "w" — name, n_dims, dims, type, offset (33 bytes). Written twice, the second
    // at offset 32, and the count raised to 2.
    let (head, info) = (&one[..69], &one[69..102]);
    let mut file = head.to_vec();
    file[8..16].copy_from_slice(&2u64.to_le_bytes());
    file.extend_from_slice(info);
    file.extend_from_slice(&info[..25]);
    file.extend_from_slice(&32u64.to_le_bytes());
    file.resize(file.len().next_multiple_of(32) + 64, 0);
    match GgufHeader::parse(&file) {
        Err(GgufError::Corrupt(msg)) => assert!(msg.contains("'w' appears twice"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hyperparameters_the_decoder_cannot_honour_are_refused() {
    let bytes = std::fs::read(common::root_path("tests/fixtures/tiny/llama/model.gguf")).unwrap();
    let header = GgufHeader::parse(&bytes).unwrap();
    pensive::loader::config_from_gguf(&header).unwrap();
    for (key, value) in [
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(f32::INFINITY)),
        ("llama.rope.freq_base", MetaValue::F32(f32::INFINITY)),
        ("llama.rope.freq_base", MetaValue::F32(f32::NAN)),
        // Rope over 8 of the 16 head dimensions (partial rotary embeddings).
        ("llama.rope.dimension_count", MetaValue::U32(8)),
    ] {
        let mut h = header.clone();
        h.metadata.0.insert(key.into(), value.clone());
        let err = pensive::loader::config_from_gguf(&h).expect_err(key);
        eprintln!("{key} = {value:?}: {err}");
    }
}
