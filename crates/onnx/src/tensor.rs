//! Making initializers and reading their values.

use crate::proto::{data_type, tensor_proto, TensorProto};
use crate::GraphError;

/// An f32 tensor stored the way exporters usually store weights: as
/// little-endian `raw_data`.
pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    assert_eq!(element_count(dims), values.len(), "tensor {name}: dims {dims:?} do not match {} values", values.len());
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: f32_le_bytes(values),
        ..Default::default()
    }
}

/// Little-endian bytes of f32 values, as `raw_data` holds them.
pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// An i64 tensor (shapes for Reshape, for example), as `raw_data`.
pub fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    assert_eq!(element_count(dims), values.len(), "tensor {name}: dims {dims:?}");
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// The number of elements a tensor with these dims holds (1 for a scalar).
pub fn element_count(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d.max(0) as usize).product()
}

/// Reads an f32 tensor's values, from `raw_data` or `float_data`.
pub fn f32_values(tensor: &TensorProto) -> Result<Vec<f32>, GraphError> {
    check_readable(tensor, data_type::FLOAT, "f32")?;
    let values = if tensor.raw_data.is_empty() {
        tensor.float_data.clone()
    } else {
        tensor.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    check_count(tensor, values.len())?;
    Ok(values)
}

/// Reads an i64 tensor's values, from `raw_data` or `int64_data`.
pub fn i64_values(tensor: &TensorProto) -> Result<Vec<i64>, GraphError> {
    check_readable(tensor, data_type::INT64, "i64")?;
    let values = if tensor.raw_data.is_empty() {
        tensor.int64_data.clone()
    } else {
        tensor.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8"))).collect()
    };
    check_count(tensor, values.len())?;
    Ok(values)
}

fn check_readable(tensor: &TensorProto, wanted: i32, what: &str) -> Result<(), GraphError> {
    if tensor.data_location == tensor_proto::DATA_LOCATION_EXTERNAL {
        return Err(GraphError::Unsupported(format!(
            "tensor {:?} keeps its data in an external file; only embedded data is read",
            tensor.name
        )));
    }
    if tensor.data_type != wanted {
        return Err(GraphError::Invalid(format!(
            "tensor {:?} has data type {}, not {what}",
            tensor.name, tensor.data_type
        )));
    }
    Ok(())
}

fn check_count(tensor: &TensorProto, found: usize) -> Result<(), GraphError> {
    let expected = element_count(&tensor.dims);
    if found != expected {
        return Err(GraphError::Invalid(format!(
            "tensor {:?} with dims {:?} should hold {expected} values, holds {found}",
            tensor.name, tensor.dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_values_read_raw_and_typed_storage_alike() {
        let raw = f32_tensor("w", &[2, 2], &[1.0, -2.0, 3.5, 0.25]);
        assert_eq!(f32_values(&raw).unwrap(), [1.0, -2.0, 3.5, 0.25]);
        let typed = TensorProto { raw_data: Vec::new(), float_data: vec![1.0, -2.0, 3.5, 0.25], ..raw };
        assert_eq!(f32_values(&typed).unwrap(), [1.0, -2.0, 3.5, 0.25]);
    }

    #[test]
    fn wrong_count_and_type_are_errors() {
        let mut tensor = f32_tensor("w", &[3], &[1.0, 2.0, 3.0]);
        tensor.dims = vec![4];
        assert!(f32_values(&tensor).is_err());
        assert!(i64_values(&i64_tensor("s", &[1], &[7])).is_ok());
        assert!(i64_values(&f32_tensor("w", &[1], &[7.0])).is_err());
    }
}
