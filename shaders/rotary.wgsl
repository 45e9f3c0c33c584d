// The RoPE angle's cosine and sine: the library that rope.wgsl and the fused q/k/v mat-mul
// (matmul.wgsl matmul_qkv) share.
//
// The angle pos * inv_freq is rounded to f32 exactly as the CPU does (inv_freq comes from
// ops::rope_inv_freq), then reduced into [-pi, pi] before sin/cos: GPU sin/cos are only
// accurate near zero and angles reach thousands.

const TWO_PI_HI: f32 = 6.28125;                 // 2π split so that n * TWO_PI_HI is exact
const TWO_PI_LO: f32 = 0.0019353071795864769;   // 2π - TWO_PI_HI

fn cos_sin(angle: f32) -> vec2<f32> {
    let n = round(angle / 6.283185307179586);
    let a = (angle - n * TWO_PI_HI) - n * TWO_PI_LO;
    return vec2<f32>(cos(a), sin(a));
}
