//! Every shader, under every knob value the backend uses, parses and validates with naga —
//! no GPU needed (the first rung of the test ladder).

use pensive::gpu::{repack::wtype_id, shader_source, Dtype, Knobs, Shader};
use pensive::quant::GgmlType;

/// Every weight type the GPU runs (all of GGUF's but BF16).
fn weight_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|&t| t != GgmlType::BF16)
}

fn validate(shader: Shader, knobs: &Knobs) {
    let src = shader_source(shader, knobs);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{shader:?} {knobs:?} does not parse:\n{}", e.emit_to_string(&src)));
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{shader:?} {knobs:?} does not validate:\n{}", e.emit_to_string(&src)));
    let _ = info;
    for entry in shader.entries() {
        assert!(
            module.entry_points.iter().any(|e| e.name == *entry),
            "{shader:?} lacks entry point {entry}"
        );
    }
}

#[test]
fn every_shader_validates_under_every_knob() {
    let mut checked = 0;
    for act in [Dtype::F32, Dtype::F16] {
        for shader in Shader::ALL {
            if shader.uses_dequant() {
                for ty in weight_types() {
                    // Every flag and both matmul shapes, in four combinations, two of them with
                    // the subgroup reduction.
                    for (tt, out_f32, x_even, lanes, subgroups) in
                        [(1, false, true, 32, false), (8, false, true, 8, true), (1, true, false, 8, false), (8, true, false, 32, true)]
                    {
                        let knobs = Knobs { wtype: wtype_id(ty), wtype1: wtype_id(ty), wtype2: wtype_id(ty), tt, out_f32, x_even, lanes, subgroups, ..Knobs::new(act) };
                        validate(shader, &knobs);
                        checked += 1;
                    }
                }
            } else {
                validate(shader, &Knobs::new(act));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * (6 + 2 * 10 * 4));
}

/// The fused matmuls (matmul_qkv, matmul_gate_up) under mixed segment types, with and
/// without the folded RMSNorm and the rope epilogue, both lane counts and token tiles.
#[test]
fn fused_matmul_variants_validate() {
    let types: Vec<u32> = weight_types().map(wtype_id).collect();
    let mut checked = 0;
    for act in [Dtype::F32, Dtype::F16] {
        for (i, &ty) in types.iter().enumerate() {
            // Segment types: all equal, and three different ones (every type in each slot).
            let (t1, t2) = (types[(i + 3) % types.len()], types[(i + 7) % types.len()]);
            for (wtype1, wtype2) in [(ty, ty), (t1, t2), (t1, t1)] {
                for (tt, norm_cols, rope, lanes, subgroups) in
                    [(1, 896, true, 8, true), (1, 0, false, 32, false), (8, 0, true, 32, true), (1, 3072, false, 8, false), (8, 0, false, 8, true)]
                {
                    let knobs = Knobs { wtype: ty, wtype1, wtype2, tt, norm_cols, rope, lanes, subgroups, ..Knobs::new(act) };
                    validate(Shader::Matmul, &knobs);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 10 * 3 * 5);
}
