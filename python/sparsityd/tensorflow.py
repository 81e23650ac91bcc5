"""AMCT's TensorFlow API (`amct_tensorflow`) on sparsityd: a drop-in for the 2:4 workflow.

    import sparsityd.tensorflow as amct
    amct.set_logging_level(print_level="info", save_level="info")
    amct.create_prune_retrain_model(graph=train_graph, outputs=outputs,
                                    record_file="./tmp/record.txt",
                                    config_defination="./retrain.cfg")
    ... train, save a checkpoint, build the inference graph, insert again, restore, freeze
    amct.save_prune_retrain_model(pb_model="masked.pb", outputs=outputs,
                                  record_file="./tmp/record.txt", save_path="./result/model")

Names and keyword arguments are AMCT's (including the spelling `config_defination`); each
call runs a sparsityd stage (insert, export, prune, check). This is the only module of the
package that imports TensorFlow.

How create_prune_retrain_model edits the graph in place: the live graph is exported as a
MetaGraphDef (with its collections), `insert` runs on it, and the live graph is brought to
insert's output by three edits: the nodes insert added are imported (references to existing
nodes mapped onto them), existing nodes whose inputs or attrs insert changed (a layer's
weight input, a Cast's input) are rewired with TensorFlow's in-place Operation setters, and
collection entries insert added are added (new variables rebuilt from their VariableDef, as
import_meta_graph does). The result is the graph `import_meta_graph` of insert's output
would give, without rebuilding the thousands of original nodes.

Backend: the sparsityd binary (`sparsityd._binary.path()`, run with --json); or the daemon,
when a `client=` (a `sparsityd.Client`) is given or SPARSITYD_URL is set. Both run the same
engine: the same inputs give byte-identical models and records.

Logging: everything goes to the logger "sparsityd.tensorflow" (the per-layer table at
INFO, as the binary's `sparsityd report` renders it for either backend, engine warnings at
WARNING, commands and job ids at DEBUG). Until set_logging_level() is called, that logger
is left to the application's logging setup.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterable, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import ops as tf_ops

from . import _binary
from .errors import SparsitydError, EngineError

__all__ = ["set_logging_level", "create_prune_retrain_model", "save_prune_retrain_model",
           "prune", "check"]

tf1 = tf.compat.v1
LOG = logging.getLogger("sparsityd.tensorflow")

# AMCT's level names (case-insensitive) and where it keeps its log: ./amct_log/, one file
# per framework, rewritten by each run.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
LOG_DIR = "amct_log"
LOG_FILE = "amct_tensorflow.log"
# Attribute marking the handlers set_logging_level installed, so a second call replaces
# them instead of stacking more.
_OURS = "_sparsityd_amct_handler"


def _level(name: str, what: str) -> int:
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise SparsitydError("%s must be one of %s (any case), not %r" % (
            what, ", ".join(LEVELS), name))
    return LEVELS[name.lower()]


def set_logging_level(print_level: str = "info", save_level: str = "info") -> str:
    """Messages at print_level and above go to stderr, at save_level and above to
    ./amct_log/amct_tensorflow.log (relative to the current directory at this call,
    rewritten by each call, as AMCT does). Returns the log file's path."""
    p = _level(print_level, "print_level")
    s = _level(save_level, "save_level")
    for h in [h for h in LOG.handlers if getattr(h, _OURS, False)]:
        LOG.removeHandler(h)
        h.close()
    os.makedirs(LOG_DIR, exist_ok=True)
    path = os.path.abspath(os.path.join(LOG_DIR, LOG_FILE))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h, level in ((logging.StreamHandler(sys.stderr), p),
                     (logging.FileHandler(path, mode="w", encoding="utf-8"), s)):
        h.setLevel(level)
        h.setFormatter(fmt)
        setattr(h, _OURS, True)
        LOG.addHandler(h)
    LOG.setLevel(min(p, s))
    # The handlers above are the destination AMCT promises; the root logger would print
    # every line a second time.
    LOG.propagate = False
    return path


# ---------------------------------------------------------------------------------------
# Backends: the same stage through the binary or the daemon


class _Outputs:
    """Where a stage's outputs land: files in a private directory, next to their final
    place when there is one, renamed into place once the stage succeeded (so a failed or
    interrupted call never leaves half a file where a script would pick it up)."""

    def __init__(self, near: str | None):
        self.dir = tempfile.mkdtemp(prefix=".sparsityd-", dir=near)
        self.model = os.path.join(self.dir, "model")
        self.record = os.path.join(self.dir, "record")

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _BinaryBackend:
    def __init__(self) -> None:
        self.binary = _binary.path()

    def run(self, stage: str, out: _Outputs, model: str, outputs: Sequence[str],
            config: str | None = None, record_in: str | None = None,
            want_model: bool = False, want_record: bool = False) -> dict:
        argv = [self.binary, stage, "--model", model]
        if config is not None:
            argv += ["--config", config]
        if record_in is not None:
            argv += ["--record", record_in]
        elif want_record:
            argv += ["--record", out.record]
        if outputs:
            argv += ["--outputs", ",".join(outputs)]
        if want_model:
            argv += ["-o", out.model]
        argv.append("--json")
        LOG.debug("running %s", " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(argv, proc.returncode, proc.stderr)
        for line in proc.stderr.splitlines():
            if line.strip():
                LOG.warning("%s", line)
        return json.loads(proc.stdout)


class _DaemonBackend:
    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, stage: str, out: _Outputs, model: str, outputs: Sequence[str],
            config: str | None = None, record_in: str | None = None,
            want_model: bool = False, want_record: bool = False) -> dict:
        options = {"emit_record": True} if want_record and stage == "prune" else {}
        job = self.client.run(stage, model, config=config, record=record_in,
                              outputs=list(outputs), name="sparsityd.tensorflow " + stage,
                              out_dir=os.path.join(out.dir, "job"), **options)
        LOG.debug("job %s (%s) %s", job.get("id"), stage, job.get("state"))
        if LOG.isEnabledFor(logging.DEBUG):  # one more request, only when it is shown
            for line in self.client.log(job).splitlines():
                if line.strip():
                    LOG.debug("job %s: %s", job.get("id"), line)
        paths = job["paths"]
        for name, dest, wanted in (("model", out.model, want_model),
                                   ("record", out.record, want_record)):
            if wanted:
                if name not in paths:
                    raise SparsitydError("job %s has no %s output" % (job.get("id"), name))
                os.replace(paths[name], dest)
        return job["result"]


@contextlib.contextmanager
def _backend(client: Any):
    """The daemon with `client`, or with a Client of its own (closed afterwards) when
    SPARSITYD_URL is set; else the binary."""
    if client is not None:
        yield _DaemonBackend(client)
    elif os.environ.get("SPARSITYD_URL"):
        from .client import Client

        with Client() as own:
            yield _DaemonBackend(own)
    else:
        yield _BinaryBackend()


@contextlib.contextmanager
def _outputs_near(path: str | None):
    """An _Outputs in path's directory (created), or in the system's temporary directory
    for a stage that leaves no file."""
    directory = None
    if path is not None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
    out = _Outputs(directory)
    try:
        yield out
    finally:
        out.cleanup()


def _table(result: dict, model: str) -> list[str]:
    """The per-layer table of a result document as the CLI prints it, rendered by the
    binary (`sparsityd report`) whichever backend made the result."""
    argv = [_binary.path(), "report", "--model", model]
    proc = subprocess.run(argv, input=json.dumps(result), capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(argv, proc.returncode, proc.stderr)
    return proc.stdout.splitlines()


def _log_result(result: dict, model: str) -> None:
    """The table at INFO, one logger line per row; the engine's warnings at WARNING."""
    if LOG.isEnabledFor(logging.INFO):
        try:
            for line in _table(result, model):
                LOG.info("%s", line)
        except (SparsitydError, OSError) as e:
            # The stage succeeded and its outputs are in place: a table that cannot be
            # printed is no reason to fail the call.
            LOG.warning("no per-layer table: %s", e)
    for w in result.get("warnings", []):
        LOG.warning("%s", w)


def _install(src: str, dest: str) -> None:
    """Moves a finished output to dest atomically; across file systems through a
    temporary copy beside dest."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = "%s.tmp.%d" % (dest, os.getpid())
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------
# Outputs: names, name:0, tensors, operations


def _output_names(outputs: Any, graph: tf.Graph | None = None) -> list[str]:
    """Node names of `outputs` (one item or a list of node names, `name:N` tensor names,
    tf.Tensor or tf.Operation). With a graph, each must be one of its nodes."""
    items = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    if not items:
        raise SparsitydError("outputs is empty: name at least one output node")
    names = []
    for item in items:
        if isinstance(item, (tf.Tensor, tf.Operation)):
            if graph is not None and item.graph is not graph:
                raise SparsitydError("output %s belongs to another graph" % item.name)
            name = item.op.name if isinstance(item, tf.Tensor) else item.name
        elif isinstance(item, str):
            name, _, index = item.partition(":")
            if not name or name.startswith("^") or (index and not index.isdigit()):
                raise SparsitydError("output %r is not a node name or a name:N tensor name"
                                     % item)
        else:
            raise SparsitydError("output %r is not a name, a tf.Tensor or a tf.Operation"
                                 % (item,))
        if graph is not None:
            try:
                graph.get_operation_by_name(name)
            except KeyError:
                raise SparsitydError("output %r is not a node of the graph" % name) from None
        if name not in names:
            names.append(name)
    return names


def _file(path: Any, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SparsitydError("%s: %s is not a file" % (what, path))
    return path


# ---------------------------------------------------------------------------------------
# Bringing the live graph to insert's output


def _data_and_control(inputs: Iterable[str]) -> tuple[list[str], list[str]]:
    data, control = [], []
    for i in inputs:
        (control if i.startswith("^") else data).append(i)
    return data, control


def _tensor_name(name: str) -> str:
    return name if ":" in name else name + ":0"


def _import_new_nodes(graph: tf.Graph, new_nodes: list, before: dict, after: graph_pb2.GraphDef,
                      library_before: set) -> None:
    """Imports the nodes insert added. Data inputs from existing nodes are mapped onto
    their tensors; control inputs on existing nodes are added after the import (the
    importer maps control inputs only under a name prefix)."""
    new_names = {n.name for n in new_nodes}
    partial = graph_pb2.GraphDef()
    partial.versions.CopyFrom(after.versions)
    for f in after.library.function:
        if f.signature.name not in library_before:
            partial.library.function.add().CopyFrom(f)
    input_map = {}
    late_control = []
    for n in new_nodes:
        keep = []
        for i in n.input:
            src = i.lstrip("^").split(":")[0]
            if src in new_names:
                keep.append(i)
            elif src not in before:
                raise SparsitydError("insert's output: node %s reads %s, which is in neither "
                                     "graph" % (n.name, i))
            elif i.startswith("^"):
                late_control.append((n.name, src))
            else:
                keep.append(i)
                input_map.setdefault(i, graph.get_tensor_by_name(_tensor_name(i)))
        c = partial.node.add()
        c.CopyFrom(n)
        del c.input[:]
        c.input.extend(keep)
    # control_dependencies(None): a caller's tf.control_dependencies block must not
    # reach the imported ops (the importer adds the graph's current ones).
    with graph.as_default(), graph.control_dependencies(None):
        tf.graph_util.import_graph_def(partial, input_map=input_map, name="")
    for name, src in late_control:
        graph.get_operation_by_name(name)._add_control_input(graph.get_operation_by_name(src))


def _rewire(graph: tf.Graph, old, new) -> None:
    """Makes the existing node `old` (NodeDef before insert) into `new` (after) in place."""
    if (old.op, old.device) != (new.op, new.device):
        raise SparsitydError("insert changed node %s's op or device (%s on %r -> %s on %r): "
                             "cannot be applied in place" % (old.name, old.op, old.device,
                                                             new.op, new.device))
    op = graph.get_operation_by_name(old.name)
    old_data, old_ctl = _data_and_control(old.input)
    new_data, new_ctl = _data_and_control(new.input)
    if len(old_data) != len(new_data):
        raise SparsitydError("insert changed the number of inputs of node %s (%d -> %d): "
                             "cannot be applied in place" % (old.name, len(old_data),
                                                             len(new_data)))
    for index, (a, b) in enumerate(zip(old_data, new_data)):
        if a != b:
            op._update_input(index, graph.get_tensor_by_name(_tensor_name(b)))
    if set(old_ctl) != set(new_ctl):
        if set(old_ctl) - set(new_ctl):
            op._remove_all_control_inputs()
            add = new_ctl
        else:
            add = [c for c in new_ctl if c not in set(old_ctl)]
        op._add_control_inputs([graph.get_operation_by_name(c[1:]) for c in add])
    for key in set(old.attr) | set(new.attr):
        if key not in new.attr:
            op._clear_attr(key)
        elif key not in old.attr or old.attr[key] != new.attr[key]:
            op._set_attr(key, new.attr[key])


def _collection_items(col) -> tuple[str, list]:
    kind = col.WhichOneof("kind")
    return kind, (list(getattr(col, kind).value) if kind else [])


def _collection_value(graph: tf.Graph, key: str, kind: str, item: Any) -> Any:
    """An entry of a MetaGraphDef collection as the live graph holds it (what
    import_meta_graph would put there)."""
    if kind == "node_list":
        return graph.as_graph_element(item)
    if kind == "bytes_list":
        proto_type = tf_ops.get_collection_proto_type(key)
        from_proto = tf_ops.get_from_proto_function(key)
        if proto_type is not None and from_proto is not None:
            proto = proto_type()
            proto.ParseFromString(item)
            return from_proto(proto)
    return item


def _update_collections(graph: tf.Graph, before: meta_graph_pb2.MetaGraphDef,
                        after: meta_graph_pb2.MetaGraphDef) -> None:
    for key in after.collection_def:
        kind, items = _collection_items(after.collection_def[key])
        old_items = []
        if key in before.collection_def:
            old_kind, old_items = _collection_items(before.collection_def[key])
            if old_items and old_kind != kind:
                raise SparsitydError("insert changed the kind of collection %s" % key)
        gone = set(old_items) - set(items)
        if gone:
            raise SparsitydError("insert removed entries from collection %s: %s" % (
                key, sorted(gone)[:5]))
        old = set(old_items)
        with graph.as_default():
            for item in items:
                if item not in old:
                    graph.add_to_collection(key, _collection_value(graph, key, kind, item))
    dropped = set(before.collection_def) - set(after.collection_def)
    if dropped:
        raise SparsitydError("insert dropped collections %s" % sorted(dropped))


def _apply_insert(graph: tf.Graph, before: meta_graph_pb2.MetaGraphDef,
                  after: meta_graph_pb2.MetaGraphDef) -> None:
    old = {n.name: n for n in before.graph_def.node}
    new_by_name = {n.name: n for n in after.graph_def.node}
    missing = [name for name in old if name not in new_by_name]
    if missing:
        raise SparsitydError("insert's output lacks nodes of the graph (%s): not an insert "
                             "of this graph" % ", ".join(sorted(missing)[:5]))
    added = [n for n in after.graph_def.node if n.name not in old]
    changed = [n for n in after.graph_def.node if n.name in old and n != old[n.name]]
    library = {f.signature.name for f in before.graph_def.library.function}
    _import_new_nodes(graph, added, old, after.graph_def, library)
    for n in changed:
        _rewire(graph, old[n.name], n)
    _update_collections(graph, before, after)
    LOG.debug("graph edited in place: %d nodes added, %d rewired", len(added), len(changed))


# ---------------------------------------------------------------------------------------
# AMCT's API


def create_prune_retrain_model(graph: tf.Graph, outputs: Any, record_file: Any,
                               config_defination: Any, *, client: Any = None) -> dict:
    """Inserts the 2:4 mask ops into `graph` in place (`sparsityd insert`) and writes the
    record to `record_file` (its directory is created). Afterwards
    tf.compat.v1.global_variables() includes the mask and step variables and the
    UPDATE_OPS collection includes `sparsityd/update`. Returns insert's result document."""
    if not isinstance(graph, tf.Graph):
        raise SparsitydError("graph must be a tf.Graph, not %s" % type(graph).__name__)
    if graph.finalized:
        raise SparsitydError("the graph is finalized (a MonitoredSession or "
                             "graph.finalize()): it cannot be edited")
    names = _output_names(outputs, graph)
    config = _file(config_defination, "config_defination")
    record_file = os.fspath(record_file)
    with graph.as_default():
        # The graph exactly as it is: export_meta_graph's default would add an
        # _output_shapes attr to every node, which the live nodes do not carry.
        before = tf1.train.export_meta_graph(graph=graph, graph_def=graph.as_graph_def())
    with _backend(client) as backend, _outputs_near(record_file) as out:
        model = os.path.join(out.dir, "input.meta")
        with open(model, "wb") as f:
            f.write(before.SerializeToString())
        result = backend.run("insert", out, model, names, config=config, want_model=True,
                             want_record=True)
        after = meta_graph_pb2.MetaGraphDef()
        with open(out.model, "rb") as f:
            after.ParseFromString(f.read())
        _apply_insert(graph, before, after)
        _install(out.record, record_file)
    _log_result(result, "graph")
    savers = sorted(n.name for n in before.graph_def.node if n.op in ("SaveV2", "SaveSlices"))
    if savers:
        LOG.warning("the graph already holds a Saver (%s): it does not save the mask and "
                    "step variables insert added; build the Saver after "
                    "create_prune_retrain_model, as AMCT's sample does", ", ".join(savers))
    return result


def save_prune_retrain_model(pb_model: Any, outputs: Any, record_file: Any, save_path: Any,
                             *, client: Any = None) -> str:
    """Exports the frozen masked inference graph `pb_model` with the record of its insert
    (`sparsityd export`): writes `<save_path>_pruned.pb` (its directory is created), whose
    weights are 2:4 and which no longer holds any inserted op. Returns that path."""
    model = _file(pb_model, "pb_model")
    record = _file(record_file, "record_file")
    dest = os.fspath(save_path) + "_pruned.pb"
    with _backend(client) as backend, _outputs_near(dest) as out:
        result = backend.run("export", out, model, _output_names(outputs), record_in=record,
                             want_model=True)
        _install(out.model, dest)
    _log_result(result, model)
    return dest


def prune(pb_model: Any, outputs: Any, config_defination: Any, save_path: Any,
          record_file: Any = None, *, client: Any = None) -> dict:
    """One shot, no retraining (`sparsityd prune`): the frozen graph `pb_model` with every
    layer the config selects made 2:4, written to `<save_path>_pruned.pb` as
    save_prune_retrain_model names it; with record_file, also the record of what was
    pruned. Returns the engine's result document."""
    model = _file(pb_model, "pb_model")
    config = _file(config_defination, "config_defination")
    dest = os.fspath(save_path) + "_pruned.pb"
    with _backend(client) as backend, _outputs_near(dest) as out:
        result = backend.run("prune", out, model, _output_names(outputs), config=config,
                             want_model=True, want_record=record_file is not None)
        if record_file is not None:
            _install(out.record, os.fspath(record_file))
        _install(out.model, dest)
    _log_result(result, model)
    return result


def check(pb_model: Any, outputs: Any = None, *, client: Any = None) -> dict:
    """A report on any model (`sparsityd check`): per layer, whether its weight is 2:4.
    With outputs, only the layers on the path to them. Returns the result document."""
    model = _file(pb_model, "pb_model")
    names = _output_names(outputs) if outputs is not None else []
    with _backend(client) as backend, _outputs_near(None) as out:
        result = backend.run("check", out, model, names)
    _log_result(result, model)
    return result
