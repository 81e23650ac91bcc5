"""Running `sparsityd insert` and reading what it writes (output model, JSON, record)."""

import json
import os
import re
import resource
import subprocess

import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2

SAMPLE_CONFIG = "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }\n"

# Address-space cap for every engine run: a bad model must fail cleanly, not allocate 4 TB.
MEM_LIMIT = 2 << 30
TIMEOUT = 120


def config_text(update_freq=0, extra=""):
    return ("prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: %d } } }\n%s"
            % (update_freq, extra))


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Result:
    def __init__(self, argv, proc, out_path, record_path):
        self.argv = argv
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.out_path = out_path
        self.record_path = record_path
        self._json = None

    @property
    def cmd(self):
        return " ".join(self.argv)

    def json(self):
        if self._json is None:
            self._json = json.loads(self.stdout)
        return self._json

    def describe(self):
        return "command: %s\nexit: %s\nstdout: %s\nstderr: %s" % (
            self.cmd, self.rc, self.stdout[:3000], self.stderr[:3000])


def run(binary, args, timeout=TIMEOUT):
    argv = [binary] + [str(a) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit)
    return proc, argv


def insert(binary, model, config, outputs, workdir, tag="out", fmt=None, as_json=True,
           extra=(), out_ext=None, config_path=None):
    """Runs insert. config: the config text (written to workdir/<tag>.cfg), unless
    config_path names an existing file to use instead."""
    os.makedirs(workdir, exist_ok=True)
    if config_path is None:
        cfg = os.path.join(workdir, tag + ".cfg")
        with open(cfg, "w") as f:
            f.write(config)
    else:
        cfg = str(config_path)
    ext = out_ext or os.path.splitext(str(model))[1] or ".pb"
    out = os.path.join(workdir, tag + ext)
    rec = os.path.join(workdir, tag + ".record.txt")
    args = ["insert", "--model", model, "--config", cfg, "--outputs", ",".join(outputs),
            "--record", rec, "-o", out]
    if fmt:
        args += ["--format", fmt]
    if as_json:
        args.append("--json")
    args += list(extra)
    proc, argv = run(binary, args)
    r = Result(argv, proc, out, rec)
    r.config_path = cfg
    return r


def assert_ok(r):
    assert r.rc == 0, "insert failed\n" + r.describe()
    return r


def assert_error(r, code=1, substrings=(), patterns=()):
    """Exit code `code`, one 'sparsityd: error: ' message on stderr holding each substring."""
    assert r.rc >= 0, "engine killed by signal %d\n%s" % (-r.rc, r.describe())
    assert r.rc == code, "expected exit %d\n%s" % (code, r.describe())
    assert "sparsityd: error: " in r.stderr, "no 'sparsityd: error: ' on stderr\n" + r.describe()
    msg = r.stderr[r.stderr.index("sparsityd: error: "):]
    for s in substrings:
        assert s.lower() in msg.lower(), "message lacks %r\n%s" % (s, r.describe())
    for p in patterns:
        assert re.search(p, msg), "message does not match %r\n%s" % (p, r.describe())
    return msg


# ---------------------------------------------------------------------------------------
# Output model


def read_model(path, fmt):
    """Returns (graph_def, meta_graph_def or None)."""
    with open(path, "rb") as f:
        data = f.read()
    if fmt == "meta":
        m = meta_graph_pb2.MetaGraphDef()
        m.ParseFromString(data)
        return m.graph_def, m
    gd = graph_pb2.GraphDef()
    if fmt == "pbtxt":
        text_format.Parse(data.decode("utf-8"), gd)
    else:
        gd.ParseFromString(data)
    return gd, None


# ---------------------------------------------------------------------------------------
# Record file: parsed with the AMCT schema of SPEC section 7, built here from descriptors so
# that a wrong field name or type in the record is a parse error.

_RECORD_CLASSES = None


def _record_classes():
    global _RECORD_CLASSES
    if _RECORD_CLASSES is not None:
        return _RECORD_CLASSES
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="sparsityd_test_record.proto",
                                             package="sdtest", syntax="proto2")
    attr = fdp.message_type.add(name="AttrProto")
    enum = attr.enum_type.add(name="AttrType")
    for i, n in enumerate(["UNDEFINED", "FLOAT", "INT", "STRING", "FLOATS", "INTS", "STRINGS"]):
        enum.value.add(name=n, number=i)
    for name, num, typ, label, tname in [
            ("name", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
            ("type", 2, F.TYPE_ENUM, F.LABEL_OPTIONAL, ".sdtest.AttrProto.AttrType"),
            ("f", 3, F.TYPE_FLOAT, F.LABEL_OPTIONAL, None),
            ("i", 4, F.TYPE_INT64, F.LABEL_OPTIONAL, None),
            ("s", 5, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
            ("floats", 6, F.TYPE_FLOAT, F.LABEL_REPEATED, None),
            ("ints", 7, F.TYPE_INT64, F.LABEL_REPEATED, None),
            ("strings", 8, F.TYPE_BYTES, F.LABEL_REPEATED, None)]:
        f = attr.field.add(name=name, number=num, type=typ, label=label)
        if tname:
            f.type_name = tname
    node = fdp.message_type.add(name="PruneNode")
    node.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    node.field.add(name="attr", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                   type_name=".sdtest.AttrProto")
    rec = fdp.message_type.add(name="PruneRecord")
    rec.field.add(name="selective_prune", number=3, type=F.TYPE_MESSAGE,
                  label=F.LABEL_OPTIONAL, type_name=".sdtest.PruneNode")
    top = fdp.message_type.add(name="InnerScaleOffsetRecord")
    top.field.add(name="prune_record", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                  type_name=".sdtest.PruneRecord")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    desc = pool.FindMessageTypeByName("sdtest.InnerScaleOffsetRecord")
    _RECORD_CLASSES = message_factory.GetMessageClass(desc)
    return _RECORD_CLASSES


def read_record(path):
    """Returns (message, {layer: {attr name: python value}}, [layer names in order])."""
    cls = _record_classes()
    msg = cls()
    with open(path) as f:
        text_format.Parse(f.read(), msg)
    by_layer = {}
    order = []
    for pr in msg.prune_record:
        sp = pr.selective_prune
        attrs = {}
        for a in sp.attr:
            t = a.type
            if t == 1:
                v = a.f
            elif t == 2:
                v = a.i
            elif t == 3:
                v = a.s.decode("utf-8", "replace")
            elif t == 4:
                v = list(a.floats)
            elif t == 5:
                v = list(a.ints)
            elif t == 6:
                v = [s.decode("utf-8", "replace") for s in a.strings]
            else:
                v = None
            attrs[a.name] = (t, v)
        by_layer[sp.name] = attrs
        order.append(sp.name)
    return msg, by_layer, order


# ---------------------------------------------------------------------------------------
# Names of inserted nodes (the contract)


def prefix(layer):
    return layer + "/sparsityd"


def tname(name):
    return name if ":" in name else name + ":0"


INIT_OP = "sparsityd/init"
UPDATE_OP = "sparsityd/update"


def read_var_tensor(graph, handle_name, dtype):
    """A ReadVariableOp on a VarHandleOp found by name (works for GraphDef and MetaGraph imports)."""
    with graph.as_default():
        h = graph.get_tensor_by_name(tname(handle_name))
        return tf.raw_ops.ReadVariableOp(resource=h, dtype=dtype,
                                         name="test_read/" + handle_name.replace("/", "_"))
