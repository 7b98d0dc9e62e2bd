//! A naive reference evaluator: the ops of a VGG, written as plainly as
//! possible and accumulated in f64, so a runtime's results can be checked
//! against something that shares none of its code. Slow by design; meant
//! for small models in tests.

use std::collections::HashMap;

use crate::proto::{data_type, ModelProto, NodeProto};
use crate::shape::{int_attribute, ints_attribute, string_attribute};
use crate::{graph, tensor, GraphError};

/// A dense f32 tensor in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(dims: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "dims {dims:?} do not match {} values", data.len());
        Tensor { dims, data }
    }

    /// Largest `|self - other|` over all elements; panics on a shape mismatch.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.dims, other.dims, "comparing tensors of different shapes");
        self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// Largest `|value|`.
    pub fn max_abs(&self) -> f32 {
        self.data.iter().map(|v| v.abs()).fold(0.0, f32::max)
    }
}

/// Window settings of a 2-D convolution or pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub strides: [usize; 2],
}

impl Default for Window {
    fn default() -> Window {
        Window { pads: [0; 4], strides: [1, 1] }
    }
}

impl Window {
    /// Output height and width of a `kernel` window sliding over an `h`×`w` plane.
    fn output_size(&self, [kh, kw]: [usize; 2], (h, w): (usize, usize)) -> (usize, usize) {
        let [pt, pl, pb, pr] = self.pads;
        let [sh, sw] = self.strides;
        ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1)
    }

    /// The taps of a `kernel` window placed at output `(oy, ox)` that fall
    /// inside an `h`×`w` plane (padding is skipped), as `(ky, kx, y, x)`,
    /// row by row: the order the sums run in.
    fn taps(
        &self,
        [kh, kw]: [usize; 2],
        (h, w): (usize, usize),
        (oy, ox): (usize, usize),
    ) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let [pt, pl, _, _] = self.pads;
        let [sh, sw] = self.strides;
        let inside = |start: usize, pad: usize, size: usize| start.checked_sub(pad).filter(|&v| v < size);
        (0..kh)
            .filter_map(move |ky| inside(oy * sh + ky, pt, h).map(|y| (ky, y)))
            .flat_map(move |(ky, y)| (0..kw).filter_map(move |kx| inside(ox * sw + kx, pl, w).map(|x| (ky, kx, y, x))))
    }
}

/// 2-D convolution of NCHW `input` with `weight` `[M, C, kH, kW]` (one group).
pub fn conv2d(input: &Tensor, weight: &Tensor, bias: Option<&[f32]>, window: Window) -> Tensor {
    let [n, c, h, w] = input.dims[..] else { panic!("conv2d wants NCHW input, got {:?}", input.dims) };
    let [m, wc, kh, kw] = weight.dims[..] else { panic!("conv2d wants a 4-D weight") };
    assert_eq!(c, wc, "input has {c} channels, weight expects {wc}");
    let (oh, ow) = window.output_size([kh, kw], (h, w));
    let mut out = vec![0f32; n * m * oh * ow];
    for b in 0..n {
        for oc in 0..m {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = bias.map_or(0.0, |bias| f64::from(bias[oc]));
                    for ic in 0..c {
                        for (ky, kx, y, x) in window.taps([kh, kw], (h, w), (oy, ox)) {
                            let pixel = input.data[((b * c + ic) * h + y) * w + x];
                            let tap = weight.data[((oc * c + ic) * kh + ky) * kw + kx];
                            sum += f64::from(pixel) * f64::from(tap);
                        }
                    }
                    out[((b * m + oc) * oh + oy) * ow + ox] = sum as f32;
                }
            }
        }
    }
    Tensor::new(vec![n, m, oh, ow], out)
}

pub fn relu(input: &Tensor) -> Tensor {
    Tensor::new(input.dims.clone(), input.data.iter().map(|&v| v.max(0.0)).collect())
}

/// 2-D max pooling of an NCHW tensor; padding never wins the max.
pub fn max_pool2d(input: &Tensor, kernel: [usize; 2], window: Window) -> Tensor {
    let [n, c, h, w] = input.dims[..] else { panic!("max_pool2d wants NCHW input") };
    let (oh, ow) = window.output_size(kernel, (h, w));
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in input.data.chunks_exact(h * w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let best = window
                    .taps(kernel, (h, w), (oy, ox))
                    .fold(f32::NEG_INFINITY, |best, (_, _, y, x)| best.max(plane[y * w + x]));
                out.push(best);
            }
        }
    }
    Tensor::new(vec![n, c, oh, ow], out)
}

/// ONNX Gemm: `alpha · op(a) · op(b) + beta · c`, `c` broadcast over rows.
pub fn gemm(a: &Tensor, b: &Tensor, c: Option<&Tensor>, alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> Tensor {
    let [ar, ac] = a.dims[..] else { panic!("gemm wants a 2-D a") };
    let [br, bc] = b.dims[..] else { panic!("gemm wants a 2-D b") };
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    assert_eq!(k, kb, "gemm inner dims differ: {k} and {kb}");
    let a_at = |i: usize, p: usize| {
        if trans_a {
            a.data[p * ac + i]
        } else {
            a.data[i * ac + p]
        }
    };
    let b_at = |p: usize, j: usize| {
        if trans_b {
            b.data[j * bc + p]
        } else {
            b.data[p * bc + j]
        }
    };
    let c_at = |i: usize, j: usize| {
        c.map_or(0.0, |c| match c.dims[..] {
            [] => c.data[0],
            [len] => c.data[if len == 1 { 0 } else { j }],
            [rows, cols] => c.data[(if rows == 1 { 0 } else { i }) * cols + if cols == 1 { 0 } else { j }],
            _ => panic!("gemm c must have rank 0 to 2"),
        })
    };
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| f64::from(a_at(i, p)) * f64::from(b_at(p, j))).sum();
            out.push((f64::from(alpha) * dot + f64::from(beta) * f64::from(c_at(i, j))) as f32);
        }
    }
    Tensor::new(vec![m, n], out)
}

/// Collapses dims `[..axis]` and `[axis..]` into a matrix.
pub fn flatten(input: &Tensor, axis: usize) -> Tensor {
    let rows = input.dims[..axis].iter().product();
    let cols = input.dims[axis..].iter().product();
    Tensor::new(vec![rows, cols], input.data.clone())
}

/// Softmax along the last axis.
pub fn softmax(input: &Tensor) -> Tensor {
    let len = *input.dims.last().expect("softmax of a scalar");
    let mut out = Vec::with_capacity(input.data.len());
    for row in input.data.chunks_exact(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| (e / total) as f32));
    }
    Tensor::new(input.dims.clone(), out)
}

/// Permutes the axes: output axis `i` is input axis `perm[i]`.
pub fn transpose(input: &Tensor, perm: &[usize]) -> Tensor {
    let rank = input.dims.len();
    assert_eq!(perm.len(), rank, "perm {perm:?} for rank {rank}");
    let out_dims: Vec<usize> = perm.iter().map(|&p| input.dims[p]).collect();
    let mut in_strides = vec![1; rank];
    for axis in (0..rank.saturating_sub(1)).rev() {
        in_strides[axis] = in_strides[axis + 1] * input.dims[axis + 1];
    }
    let mut out = Vec::with_capacity(input.data.len());
    let mut index = vec![0usize; rank];
    for _ in 0..input.data.len() {
        let offset: usize = index.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum();
        out.push(input.data[offset]);
        // Advance the output index, last axis fastest.
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < out_dims[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Tensor::new(out_dims, out)
}

/// `BatchNormalization` in inference form, by its definition:
/// `(x − mean[c]) / √(var[c] + ε) · scale[c] + bias[c]` on `[N, C, …]`.
pub fn batch_norm(x: &Tensor, [scale, bias, mean, var]: [&Tensor; 4], epsilon: f32) -> Tensor {
    let channels = x.dims[1];
    let inner: usize = x.dims[2..].iter().product();
    let out = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner) % channels;
            let normalised =
                (f64::from(v) - f64::from(mean.data[c])) / (f64::from(var.data[c]) + f64::from(epsilon)).sqrt();
            (normalised * f64::from(scale.data[c]) + f64::from(bias.data[c])) as f32
        })
        .collect();
    Tensor::new(x.dims.clone(), out)
}

/// An element-wise binary op with NumPy broadcasting (dims aligned from the right).
pub fn broadcast(a: &Tensor, b: &Tensor, op: impl Fn(f64, f64) -> f64) -> Result<Tensor, GraphError> {
    let rank = a.dims.len().max(b.dims.len());
    let padded = |dims: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - dims.len()).chain(dims.iter().copied()).collect()
    };
    let (da, db) = (padded(&a.dims), padded(&b.dims));
    let mut out_dims = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        if x != y && x != 1 && y != 1 {
            return Err(GraphError::Invalid(format!("cannot broadcast {:?} with {:?}", a.dims, b.dims)));
        }
        out_dims.push(x.max(y));
    }
    let strides = |dims: &[usize]| -> Vec<usize> {
        let mut strides = vec![0; rank];
        let mut step = 1;
        for axis in (0..rank).rev() {
            strides[axis] = if dims[axis] == 1 { 0 } else { step };
            step *= dims[axis];
        }
        strides
    };
    let (sa, sb) = (strides(&da), strides(&db));
    let total: usize = out_dims.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut index = vec![0; rank];
    for _ in 0..total {
        let offset = |s: &[usize]| index.iter().zip(s).map(|(i, s)| i * s).sum::<usize>();
        out.push(op(f64::from(a.data[offset(&sa)]), f64::from(b.data[offset(&sb)])) as f32);
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < out_dims[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(Tensor::new(out_dims, out))
}

/// Evaluates a model on `feeds` and returns the `wanted` tensors (graph
/// outputs or intermediate ones), in that order. Knows Conv, Relu, MaxPool,
/// Flatten, Reshape, Gemm, Softmax, Transpose, Identity, Dropout,
/// BatchNormalization, Add, Sub, Mul, Div and Sqrt; any other op is an error.
pub fn evaluate(model: &ModelProto, feeds: &[(&str, Tensor)], wanted: &[&str]) -> Result<Vec<Tensor>, GraphError> {
    let graph = graph(model)?;
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
    for init in &graph.initializer {
        match init.data_type {
            data_type::FLOAT => {
                let dims = init.dims.iter().map(|&d| d as usize).collect();
                values.insert(init.name.clone(), Tensor::new(dims, tensor::f32_values(init)?));
            }
            data_type::INT64 => {
                shapes.insert(init.name.clone(), tensor::i64_values(init)?);
            }
            _ => {}
        }
    }
    for (name, value) in feeds {
        values.insert((*name).to_owned(), value.clone());
    }
    for node in &graph.node {
        if wanted.iter().all(|w| values.contains_key(*w)) {
            break;
        }
        let output = run_node(node, &values, &shapes)?;
        values.insert(node.output[0].clone(), output);
    }
    wanted.iter().map(|w| values.remove(*w).ok_or_else(|| GraphError::UnknownTensor((*w).to_owned()))).collect()
}

fn run_node(
    node: &NodeProto,
    values: &HashMap<String, Tensor>,
    shapes: &HashMap<String, Vec<i64>>,
) -> Result<Tensor, GraphError> {
    let input = |i: usize| -> Result<&Tensor, GraphError> {
        let name =
            node.input.get(i).ok_or_else(|| GraphError::Invalid(format!("node {:?} lacks input {i}", node.name)))?;
        values.get(name).ok_or_else(|| GraphError::UnknownTensor(name.clone()))
    };
    let window = || -> Result<Window, GraphError> {
        if string_attribute(node, "auto_pad").is_some_and(|p| p != "NOTSET") {
            return Err(GraphError::Unsupported(format!("node {:?}: auto_pad", node.name)));
        }
        let pads = ints_attribute(node, "pads").unwrap_or_else(|| vec![0; 4]);
        let strides = ints_attribute(node, "strides").unwrap_or_else(|| vec![1; 2]);
        let as_usize = |v: &[i64]| v.iter().map(|&x| x as usize).collect::<Vec<_>>();
        let (pads, strides) = (as_usize(&pads), as_usize(&strides));
        Ok(Window {
            pads: pads.try_into().map_err(|_| GraphError::Unsupported("only 2-D windows".into()))?,
            strides: strides.try_into().map_err(|_| GraphError::Unsupported("only 2-D windows".into()))?,
        })
    };
    let float_attribute =
        |name: &str, default: f32| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.f);
    Ok(match node.op_type.as_str() {
        "Conv" => {
            if int_attribute(node, "group").unwrap_or(1) != 1 {
                return Err(GraphError::Unsupported(format!("node {:?}: grouped conv", node.name)));
            }
            let bias = if node.input.len() > 2 { Some(input(2)?.data.as_slice()) } else { None };
            conv2d(input(0)?, input(1)?, bias, window()?)
        }
        "Relu" => relu(input(0)?),
        "MaxPool" => {
            let kernel = ints_attribute(node, "kernel_shape").unwrap_or_default();
            let [kh, kw] = kernel[..] else {
                return Err(GraphError::Unsupported(format!("node {:?}: only 2-D pooling", node.name)));
            };
            max_pool2d(input(0)?, [kh as usize, kw as usize], window()?)
        }
        "Flatten" => {
            let x = input(0)?;
            let axis = int_attribute(node, "axis").unwrap_or(1);
            let axis = if axis < 0 { axis + x.dims.len() as i64 } else { axis };
            flatten(x, axis as usize)
        }
        "Reshape" => {
            let x = input(0)?;
            let target =
                node.input.get(1).and_then(|s| shapes.get(s)).ok_or_else(|| {
                    GraphError::Unsupported(format!("node {:?}: Reshape to a computed shape", node.name))
                })?;
            let mut dims: Vec<usize> =
                target.iter().enumerate().map(|(i, &t)| if t == 0 { x.dims[i] } else { t.max(0) as usize }).collect();
            if let Some(hole) = target.iter().position(|&t| t == -1) {
                dims[hole] = 1;
                dims[hole] = x.data.len() / dims.iter().product::<usize>();
            }
            Tensor::new(dims, x.data.clone())
        }
        "Gemm" => {
            let c = if node.input.len() > 2 { Some(input(2)?) } else { None };
            gemm(
                input(0)?,
                input(1)?,
                c,
                float_attribute("alpha", 1.0),
                float_attribute("beta", 1.0),
                int_attribute(node, "transA") == Some(1),
                int_attribute(node, "transB") == Some(1),
            )
        }
        "Softmax" => {
            let x = input(0)?;
            let axis = int_attribute(node, "axis").unwrap_or(-1);
            if axis != -1 && axis != x.dims.len() as i64 - 1 {
                return Err(GraphError::Unsupported(format!("node {:?}: softmax over a non-last axis", node.name)));
            }
            softmax(x)
        }
        "Transpose" => {
            let x = input(0)?;
            let perm = ints_attribute(node, "perm").unwrap_or_else(|| (0..x.dims.len() as i64).rev().collect());
            transpose(x, &perm.iter().map(|&p| p as usize).collect::<Vec<_>>())
        }
        "Identity" | "Dropout" => input(0)?.clone(),
        "BatchNormalization" => {
            let params = [input(1)?, input(2)?, input(3)?, input(4)?];
            batch_norm(input(0)?, params, float_attribute("epsilon", 1e-5))
        }
        "Add" => broadcast(input(0)?, input(1)?, |a, b| a + b)?,
        "Sub" => broadcast(input(0)?, input(1)?, |a, b| a - b)?,
        "Mul" => broadcast(input(0)?, input(1)?, |a, b| a * b)?,
        "Div" => broadcast(input(0)?, input(1)?, |a, b| a / b)?,
        "Sqrt" => {
            let x = input(0)?;
            Tensor::new(x.dims.clone(), x.data.iter().map(|&v| f64::from(v).sqrt() as f32).collect())
        }
        other => return Err(GraphError::Unsupported(format!("the reference evaluator does not know op {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv2d_with_padding_by_hand() {
        // A 1x1x2x2 image, a 3x3 kernel of ones, pad 1: each output is the
        // sum of the pixels in its neighbourhood, here all of them.
        let input = Tensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let weight = Tensor::new(vec![1, 1, 3, 3], vec![1.0; 9]);
        let window = Window { pads: [1; 4], strides: [1, 1] };
        let out = conv2d(&input, &weight, Some(&[0.5]), window);
        assert_eq!(out.dims, [1, 1, 2, 2]);
        assert_eq!(out.data, [10.5; 4]);
    }

    #[test]
    fn max_pool_picks_the_largest_in_each_window() {
        let input = Tensor::new(vec![1, 1, 2, 4], vec![1.0, 5.0, -1.0, -2.0, 3.0, 2.0, -3.0, -4.0]);
        let out = max_pool2d(&input, [2, 2], Window { pads: [0; 4], strides: [2, 2] });
        assert_eq!(out.dims, [1, 1, 1, 2]);
        assert_eq!(out.data, [5.0, -1.0]);
    }

    #[test]
    fn gemm_with_transposed_b_is_a_linear_layer() {
        let x = Tensor::new(vec![1, 2], vec![1.0, 2.0]);
        let w = Tensor::new(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let b = Tensor::new(vec![3], vec![0.5, 0.5, 0.5]);
        let out = gemm(&x, &w, Some(&b), 1.0, 1.0, false, true);
        assert_eq!(out.data, [1.5, 2.5, 3.5]);
    }

    #[test]
    fn transpose_nhwc_to_nchw() {
        // [1, 1, 2, 3] NHWC: pixel (0,x) has channels (x, 10 + x, 20 + x).
        let nhwc = Tensor::new(vec![1, 1, 2, 3], vec![0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
        let nchw = transpose(&nhwc, &[0, 3, 1, 2]);
        assert_eq!(nchw.dims, [1, 3, 1, 2]);
        assert_eq!(nchw.data, [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let column = Tensor::new(vec![2, 1], vec![10.0, 20.0]);
        assert_eq!(broadcast(&a, &column, |x, y| x + y).unwrap().data, [11.0, 12.0, 13.0, 24.0, 25.0, 26.0]);
        let row = Tensor::new(vec![3], vec![1.0, 0.0, -1.0]);
        assert_eq!(broadcast(&a, &row, |x, y| x * y).unwrap().data, [1.0, 0.0, -3.0, 4.0, 0.0, -6.0]);
        assert!(broadcast(&a, &Tensor::new(vec![2], vec![0.0; 2]), |x, y| x + y).is_err());
    }

    #[test]
    fn batch_norm_normalises_each_channel() {
        // Two channels of two values; channel 1 has mean 4, var 4 (std 2).
        let x = Tensor::new(vec![1, 2, 1, 2], vec![1.0, 3.0, 4.0, 8.0]);
        let t = |v: [f32; 2]| Tensor::new(vec![2], v.to_vec());
        let out = batch_norm(&x, [&t([1.0, 3.0]), &t([0.0, 1.0]), &t([0.0, 4.0]), &t([1.0, 4.0])], 0.0);
        assert_eq!(out.data, [1.0, 3.0, 1.0, 7.0]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let out = softmax(&Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]));
        for row in out.data.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!((out.data[3] - 1.0 / 3.0).abs() < 1e-6);
    }
}
