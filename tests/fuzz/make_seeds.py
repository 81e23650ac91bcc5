#!/usr/bin/env python3
"""Regenerates the seed corpora of tests/fuzz/corpus/ (the generated files are checked in).

    tests/fuzz/make_seeds.py            # needs protoc (Debian: protobuf-compiler)

Every fuzz_graph and fuzz_pbtext seed starts with the target's selector byte (see the
header comment of fuzz_graph.c / fuzz_pbtext.c); fuzz_record seeds are plain record text.

fuzz_graph: the text graphs of tests/unit/data as binary GraphDefs (protoc --encode) and
as text, MetaGraphDefs built around them, weights of 4 KiB and more in tensor_content
(the loader's zero-copy path), and regression inputs: AttrValue.func -> NameAttrList.attr
-> map entry -> AttrValue nested DEEP_LEVELS times (stack overflow in protobuf-c's
recursive unpacker before the loader got its depth check), and a splat weight claiming
2^32 elements.
"""
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "unit", "data")
CORPUS = os.path.join(HERE, "corpus")
DEEP_LEVELS = 5000

# fuzz_graph selector: bits 0-1 format, bit 2 save
AUTO, GRAPHDEF, METAGRAPH, PBTXT, SAVE = 0, 1, 2, 3, 4
# fuzz_pbtext selector
T_CONFIG, T_RECORD, T_GRAPH, T_META, T_AMCT_CONFIG, T_AMCT_RECORD = range(6)

DT_FLOAT, DT_INT32, DT_BFLOAT16, DT_HALF = 1, 3, 14, 19


# ---- protobuf wire format ----

def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def key(field, wt):
    return varint(field << 3 | wt)


def f_varint(field, v):
    return key(field, 0) + varint(v)


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return key(field, 2) + varint(len(b)) + b


def attr_entry(name, value):  # NodeDef.attr map entry (field 5): key 1, value 2
    return f_bytes(5, f_bytes(1, name) + f_bytes(2, value))


def av_type(dt):  # AttrValue.type = 6
    return f_varint(6, dt)


def av_bool(b):  # AttrValue.b = 5
    return f_varint(5, 1 if b else 0)


def shape(dims):  # TensorShapeProto.dim = 2, Dim.size = 1
    return b"".join(f_bytes(2, f_varint(1, d)) for d in dims)


def tensor(dt, dims, content=None, float_val=None):
    t = f_varint(1, dt) + f_bytes(2, shape(dims))
    if content is not None:
        t += f_bytes(4, content)
    if float_val is not None:  # packed float_val = 5
        t += f_bytes(5, b"".join(struct.pack("<f", x) for x in float_val))
    return t


def node(name, op, inputs=(), attrs=()):
    n = f_bytes(1, name) + f_bytes(2, op)
    for i in inputs:
        n += f_bytes(3, i)
    for k, v in attrs:
        n += attr_entry(k, v)
    return n


def graph(*nodes, producer=1395):
    return b"".join(f_bytes(1, n) for n in nodes) + f_bytes(4, f_varint(1, producer))


def meta(graph_def, collections=()):
    """MetaGraphDef: meta_info_def (1, unknown to our schema: travels as unknown field),
    graph_def (2), collection_def map (4)."""
    m = f_bytes(1, f_bytes(1, "v1.0") + f_bytes(4, "2.15.0"))
    m += f_bytes(2, graph_def)
    for k, v in collections:
        m += f_bytes(4, f_bytes(1, k) + f_bytes(2, v))
    return m


def const(name, t):
    return node(name, "Const", attrs=[("dtype", av_type(t[1])), ("value", f_bytes(8, t[0]))])


# ---- seeds ----

def encode_pbtxt(path, msg="tensorflow.GraphDef"):
    with open(path, "rb") as f:
        text = f.read()
    return subprocess.run(
        ["protoc", "--encode=" + msg, "-I", os.path.join(ROOT, "proto"),
         os.path.join(ROOT, "proto", "tf_graph.proto")],
        input=text, check=True, capture_output=True).stdout


def sparse24(rows, cols, seed):
    """A rows x cols float matrix, 2:4 sparse along axis 0 (the MatMul prune axis)."""
    vals = []
    x = seed
    for r in range(rows):
        for c in range(cols):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            keep = (r % 4) in ((c + x) % 2, 2 + (c % 2))
            vals.append(((x >> 8) % 2000 - 1000) / 997.0 if keep else 0.0)
    return vals


def wide_graph():
    """MatMul and Conv2D with tensor_content weights of 4 KiB and more."""
    w = sparse24(32, 32, 7)
    wc = struct.pack("<%df" % len(w), *w)  # 4096 bytes
    kb = struct.pack("<%dH" % (2 * 2 * 8 * 64), *[(i * 2654435761 >> 16) & 0x7F7F
                                                  for i in range(2 * 2 * 8 * 64)])  # 4 KiB bf16
    return graph(
        node("x", "Placeholder", attrs=[("dtype", av_type(DT_FLOAT))]),
        const("w", (tensor(DT_FLOAT, [32, 32], content=wc), DT_FLOAT)),
        node("w/read", "Identity", ["w"], [("T", av_type(DT_FLOAT))]),
        node("mm", "MatMul", ["x", "w/read"], [("T", av_type(DT_FLOAT)),
                                               ("transpose_a", av_bool(False))]),
        node("img", "Placeholder", attrs=[("dtype", av_type(DT_BFLOAT16))]),
        const("k", (tensor(DT_BFLOAT16, [2, 2, 8, 64], content=kb), DT_BFLOAT16)),
        node("conv", "Conv2D", ["img", "k"], [("T", av_type(DT_BFLOAT16))]),
        node("out", "Identity", ["mm", "^conv"], [("T", av_type(DT_FLOAT))]),
    )


def masked_graph():
    """A layer reading a sparsityd masked weight (the shape insert leaves behind)."""
    w = sparse24(8, 4, 3)
    return graph(
        node("x", "Placeholder", attrs=[("dtype", av_type(DT_FLOAT))]),
        const("w", (tensor(DT_FLOAT, [8, 4], float_val=w), DT_FLOAT)),
        node("fc/sparsityd/mask", "VariableV2", attrs=[("dtype", av_type(DT_FLOAT)),
                                                      ("shape", f_bytes(7, shape([8, 4])))]),
        node("fc/sparsityd/masked_weight", "Mul", ["w", "fc/sparsityd/mask"],
             [("T", av_type(DT_FLOAT))]),
        node("fc", "MatMul", ["x", "fc/sparsityd/masked_weight"], [("T", av_type(DT_FLOAT))]),
    )


def deep_func_graph(levels):
    """A NodeDef attr whose AttrValue nests func -> attr -> value `levels` times."""
    av = f_varint(3, 1)  # AttrValue.i = 1 at the bottom
    for _ in range(levels):
        entry = f_bytes(1, "a") + f_bytes(2, av)        # map<string, AttrValue> entry
        nal = f_bytes(1, "f") + f_bytes(2, entry)       # NameAttrList{name, attr}
        av = f_bytes(10, nal)                           # AttrValue.func
    return graph(node("x", "Placeholder", attrs=[("dtype", av_type(DT_FLOAT))]),
                 node("deep", "PartitionedCall", ["x"], [("f", av)]))


def splat_graph():
    """A MatMul whose Const weight is one float_val splatted over 2^16 x 2^16 elements:
    a few bytes of model that ask the check stage for 2^32 decoded elements."""
    return graph(
        node("x", "Placeholder", attrs=[("dtype", av_type(DT_FLOAT))]),
        const("w", (tensor(DT_FLOAT, [65536, 65536], float_val=[0.5]), DT_FLOAT)),
        node("mm", "MatMul", ["x", "w"], [("T", av_type(DT_FLOAT))]),
    )


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(DATA, *parts), "rb") as f:
        return f.read()


def graph_seeds():
    t = "fuzz_graph"
    texts = {
        "chain": ("graphs", "chain.pbtxt"),
        "conv": ("graphs", "conv.pbtxt"),
        "small": ("graphs", "small.pbtxt"),
        "graph": ("pbtext", "graph.pbtxt"),
    }
    for name, parts in texts.items():
        text = read(*parts)
        binary = encode_pbtxt(os.path.join(DATA, *parts))
        write(t, name + ".pb", bytes([GRAPHDEF]) + binary)
        write(t, name + "-auto-save.pb", bytes([AUTO | SAVE]) + binary)
        write(t, name + "-save.pbtxt", bytes([PBTXT | SAVE]) + text)
        write(t, name + "-auto.pbtxt", bytes([AUTO]) + text)
    small = encode_pbtxt(os.path.join(DATA, "graphs", "small.pbtxt"))
    conv = encode_pbtxt(os.path.join(DATA, "graphs", "conv.pbtxt"))
    coll = [
        ("variables", f_bytes(2, f_bytes(1, f_bytes(1, "w2:0") + f_bytes(2, "w2/Assign")))),
        ("losses", f_bytes(1, f_bytes(1, "mm3:0"))),
        ("ints", f_bytes(3, f_bytes(1, varint(1) + varint(2)))),
        ("floats", f_bytes(4, f_bytes(1, struct.pack("<2f", 0.5, -3.0)))),
    ]
    write(t, "small.meta", bytes([METAGRAPH]) + meta(small, coll))
    write(t, "small-auto-save.meta", bytes([AUTO | SAVE]) + meta(small, coll))
    write(t, "conv-save.meta", bytes([METAGRAPH | SAVE]) + meta(conv))
    mg = encode_pbtxt(os.path.join(DATA, "pbtext", "meta_graph.pbtxt"),
                      "tensorflow.MetaGraphDef")
    write(t, "meta_graph.meta", bytes([METAGRAPH]) + mg)
    wide = wide_graph()
    write(t, "wide.pb", bytes([GRAPHDEF]) + wide)
    write(t, "wide-auto-save.pb", bytes([AUTO | SAVE]) + wide)
    write(t, "wide-save.meta", bytes([METAGRAPH | SAVE]) + meta(wide))
    write(t, "masked-save.pb", bytes([GRAPHDEF | SAVE]) + masked_graph())
    write(t, "func-shallow.pb", bytes([GRAPHDEF | SAVE]) + deep_func_graph(3))
    write(t, "regress-deep-func-%d.pb" % DEEP_LEVELS,
          bytes([GRAPHDEF]) + deep_func_graph(DEEP_LEVELS))
    write(t, "regress-splat-2p32.pb", bytes([GRAPHDEF]) + splat_graph())


VALID_RECORD = b"""prune_record {
  selective_prune {
    name: "fc/MatMul"
    attr { name: "mask_shape" type: INTS ints: 8 ints: 16 }
    attr { name: "prune_axis" type: INT i: 0 }
    attr { name: "update_freq" type: INT i: 10 }
    attr { name: "n_out_of_m_type" type: STRING s: "M4N2" }
    attr { name: "layer_type" type: STRING s: "MatMul" }
    attr { name: "dtype" type: STRING s: "float32" }
    attr { name: "weight_input" type: STRING s: "fc/weights/read" }
    attr { name: "weight" type: STRING s: "fc/weights" }
    attr { name: "scope" type: STRING s: "fc/MatMul/sparsityd" }
    attr { name: "mask_var" type: STRING s: "fc/MatMul/sparsityd/mask" }
  }
}
prune_record {
  selective_prune {
    name: "conv1/Conv2D"
    attr { name: "mask_shape" type: INTS ints: [3, 3, 16, 32] }
    attr { name: "prune_axis" type: INT i: 2 }
    attr { name: "update_freq" type: INT i: 0 }
    attr { name: "layer_type" type: STRING s: "Conv2D" }
    attr { name: "weight_input" type: STRING s: "conv1/kernel" }
  }
}
"""

CONFIGS = [
    b"prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 "
    b"update_freq: 10 } } }\n",
    b"# skip lists and overrides\n"
    b"skip_layers: \"short\"\nskip_layer_types: \"Conv2DBackpropInput\"\n"
    b"regular_prune_skip_layers: [\"mm_t\"]\nregular_prune_skip_types: \"Conv2D\"\n"
    b"override_layer_configs { layer_name: \"fc/MatMul\" prune_config { n_out_of_m_pruner "
    b"{ l1_selective_prune { update_freq: 3 } } } }\n"
    b"override_layer_types < layer_type: 'Conv2D' prune_config: < n_out_of_m_pruner < "
    b"l1_selective_prune < update_freq: 0x7 > > > >\n",
    b"batch_num: 2\nretrain_data_quant_config { algo: \"ulq\" clip_max: 1e30 }\n",
    b"prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.5 "
    b"ascend_optimized: true } } }\n",
]


def pbtext_seeds():
    t = "fuzz_pbtext"
    write(t, "config-sample.cfg", bytes([T_CONFIG]) + read("configs", "sample.cfg"))
    write(t, "config-retrain.cfg", bytes([T_CONFIG]) + read("pbtext", "retrain_config.pbtxt"))
    for i, c in enumerate(CONFIGS):
        write(t, "config-%d.cfg" % i, bytes([T_CONFIG]) + c)
        write(t, "amct-config-%d.pbtxt" % i, bytes([T_AMCT_CONFIG]) + c)
    write(t, "record-unit.txt", bytes([T_RECORD]) + read("pbtext", "record.pbtxt"))
    write(t, "record-valid.txt", bytes([T_RECORD]) + VALID_RECORD)
    write(t, "amct-record.pbtxt", bytes([T_AMCT_RECORD]) + read("pbtext", "record.pbtxt"))
    for name in ("chain", "conv", "small"):
        write(t, "graph-%s.pbtxt" % name, bytes([T_GRAPH]) + read("graphs", name + ".pbtxt"))
    write(t, "graph-pbtext.pbtxt", bytes([T_GRAPH]) + read("pbtext", "graph.pbtxt"))
    write(t, "meta-graph.pbtxt", bytes([T_META]) + read("pbtext", "meta_graph.pbtxt"))
    # 120 levels: past the reader's limit of 100 (an error, not a crash)
    deep = b"node { attr { key: \"f\" value { " + b"func { attr { key: \"a\" value { " * 40
    deep += b"i: 1" + b" } } }" * 40 + b" } } }\n"
    write(t, "graph-deep-120.pbtxt", bytes([T_GRAPH]) + deep)
    tricky = (b"node <name: 'a\\x41\\101\\n\\'' op: \"Const\" \"ant\"; input: [\"b:1\", \"^c\"]\n"
              b"  attr { key: 'value' value { tensor { dtype: DT_HALF half_val: [1, 0x3c00] "
              b"float_val: -inf float_val: nan float_val: 1e-45 int64_val: "
              b"-9223372036854775808 } } } >\n"
              b"versions { producer: 4294967295 }  # out of range for int32\n")
    write(t, "graph-tricky.pbtxt", bytes([T_GRAPH]) + tricky)


def record_seeds():
    t = "fuzz_record"
    write(t, "unit.record", read("pbtext", "record.pbtxt"))
    write(t, "valid.record", VALID_RECORD)
    write(t, "bad-axis.record",
          b"prune_record { selective_prune { name: \"x\" attr { name: \"mask_shape\" "
          b"type: INTS ints: [4, 4] } attr { name: \"prune_axis\" type: INT i: 2 } "
          b"attr { name: \"update_freq\" type: INT i: 4294967296 } attr { name: "
          b"\"layer_type\" type: STRING s: \"MatMul\" } attr { name: \"weight_input\" "
          b"type: STRING s: \"w\\000x\" } } }\n")


def main():
    if subprocess.run(["which", "protoc"], capture_output=True).returncode != 0:
        sys.exit("make_seeds: protoc not found (Debian: protobuf-compiler)")
    graph_seeds()
    pbtext_seeds()
    record_seeds()
    total = 0
    for d, _, files in os.walk(CORPUS):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    print("make_seeds: %d bytes in %s" % (total, os.path.relpath(CORPUS, ROOT)))


if __name__ == "__main__":
    main()
