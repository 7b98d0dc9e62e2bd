# Writes exporter_fields.onnx: a small model in which every ONNX field that
# onnx-graph declares is set, with the official `onnx` Python package
# (onnx==1.17.0). The round-trip test reads it to check the field numbers.
# Run from this folder: python make_exporter_fields.py
import onnx, numpy as np
from onnx import helper, TensorProto, numpy_helper
def ss(k,v):
    e = onnx.StringStringEntryProto(); e.key=k; e.value=v; return e
w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2,3), "w")
w.doc_string = "weight doc"; w.metadata_props.extend([ss("a","b")])
ext = TensorProto(); ext.name="ext"; ext.data_type=TensorProto.FLOAT; ext.dims.extend([4])
ext.data_location = TensorProto.EXTERNAL; ext.external_data.extend([ss("location","w.bin"), ss("offset","0"), ss("length","16")])
fd = helper.make_tensor("fd", TensorProto.FLOAT, [3], [1.0,2.0,3.0]); # float_data
i64 = helper.make_tensor("i64", TensorProto.INT64, [2], [5,-1])
i32 = helper.make_tensor("i32", TensorProto.INT32, [2], [7,8])
dbl = helper.make_tensor("dbl", TensorProto.DOUBLE, [2], [1.5,2.5])
u64 = helper.make_tensor("u64", TensorProto.UINT64, [1], [2**63+5])
strt = helper.make_tensor("strs", TensorProto.STRING, [2], [b"x", b"yz"])
seg = TensorProto(); seg.name="seg"; seg.data_type=1; seg.dims.extend([1]); seg.segment.begin=1; seg.segment.end=2; seg.float_data.append(3.0)
sp = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0],dtype=np.float32),"spv"), numpy_helper.from_array(np.array([0],dtype=np.int64),"spi"), [3])
sub = helper.make_graph([helper.make_node("Identity",["x"],["y"])], "sub", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
node = helper.make_node("Custom", ["a","w"], ["out", ""], name="n1", domain="my.domain", doc_string="node doc",
    f=1.5, i=0, s="str", t=fd, g=sub, floats=[1.0,2.0], ints=[1,-2,3], strings=[b"a",b"b"], tensors=[i64], graphs=[sub],
    sparse_tensor=sp, sparse_tensors=[sp], tp=helper.make_tensor_type_proto(TensorProto.FLOAT,[1]), type_protos=[helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.INT64,["N"]))])
node.overload = "ov"; node.metadata_props.extend([ss("nk","nv")])
node.attribute[0].doc_string = "attr doc"
ra = onnx.AttributeProto(); ra.name="r"; ra.ref_attr_name="outer"; ra.type=onnx.AttributeProto.INT; node.attribute.append(ra)
vi_in = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, None])
vi_in.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"; vi_in.type.denotation = "TENSOR"; vi_in.doc_string="in doc"; vi_in.metadata_props.extend([ss("vk","vv")])
vi_out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
vi_map = onnx.ValueInfoProto(); vi_map.name="m"; vi_map.type.CopyFrom(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
vi_opt = onnx.ValueInfoProto(); vi_opt.name="o"; vi_opt.type.CopyFrom(helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
vi_sp = onnx.ValueInfoProto(); vi_sp.name="sp"; vi_sp.type.CopyFrom(helper.make_sparse_tensor_type_proto(TensorProto.FLOAT, [3]))
vi_op = onnx.ValueInfoProto(); vi_op.name="op"; vi_op.type.opaque_type.domain="d"; vi_op.type.opaque_type.name="nm"
g = helper.make_graph([node], "main", [vi_in], [vi_out], initializer=[w, ext, i64, i32, dbl, u64, strt, seg], value_info=[vi_map, vi_opt, vi_sp, vi_op], sparse_initializer=[sp], doc_string="graph doc")
qa = onnx.TensorAnnotation(); qa.tensor_name="w"; qa.quant_parameter_tensor_names.extend([ss("SCALE_TENSOR","s")]); g.quantization_annotation.append(qa)
g.metadata_props.extend([ss("gk","gv")])
fn = helper.make_function("my.domain", "Fn", ["x"], ["y"], [helper.make_node("Identity",["x"],["y"])], [helper.make_opsetid("",13)], attributes=["alpha"], attribute_protos=[helper.make_attribute("beta", 2)], doc_string="fn doc")
fn.overload="o1"; fn.value_info.extend([helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]); fn.metadata_props.extend([ss("fk","fv")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("",13), helper.make_opsetid("my.domain",1)], functions=[fn], producer_name="py", producer_version="1", domain="dom", model_version=3, doc_string="model doc")
m.ir_version = 10
m.metadata_props.extend([ss("mk","mv")])
ti = onnx.TrainingInfoProto(); ti.initialization.CopyFrom(sub); ti.algorithm.CopyFrom(sub); ti.initialization_binding.extend([ss("w","y")]); ti.update_binding.extend([ss("w","y")])
m.training_info.append(ti)
open("exporter_fields.onnx","wb").write(m.SerializeToString())
print("wrote exporter_fields.onnx,", len(m.SerializeToString()), "bytes")
