"""The implicit anchor graph: per-video nearest-anchor lists, anchor -> videos inverted lists, pair tags.

The released BTH / DKPH / MCMSH code builds a dense ``N x N`` similarity matrix (8.3 GB for FCVID)
from an anchor graph (BTH ``utils/calculate_neighbors.py`` + ``utils/apro_adj.py``)::

    Z_s[i, k] = softmax over i's s nearest anchors of (-d2(i, k) / (2 sigma_s^2))   (float32)
    sigma_s   = mean_i sqrt(d2 to the s-th nearest anchor) / sqrt(2)                  (one global bandwidth)
    A_s       = Z_s diag(Z_s.sum(0))^-1 Z_s^T,     SS_s = (A_s > 1e-5)
    adj       = 2 (SS_5 - SS_4) + SS_3             (1 = similar, 2 = "middle distance", 0 = other)

:class:`AnchorGraph` keeps only the ``O(N a)`` ingredients (anchor lists, softmax weights, column
sums, inverted lists) and evaluates any entry on demand: ``A_s(i, j)`` is a sum over the anchors
that i and j share, so a batch of pairs is one ``(P, s, s)`` broadcast comparison.

Bit-exactness with the released code (rule ``"bth"``, tested against a literal port of it):

* ``sigma_s``, the log-sum-exp softmax and its float32 rounding are the released numpy expressions
  applied to arrays of the released shapes, so they round identically.
* ``Z.sum(0)`` on a C-ordered float32 matrix is a *sequential* float32 sum over rows (numpy only
  sums pairwise along the contiguous axis); we reproduce it with ``np.add.at`` in row order.
* ``Z @ diag(colsum**-1)`` is one float32 product per entry, ``fl32(z * fl32(1/colsum))``.
* The float32 GEMM ``(Z D) @ Z^T`` of OpenBLAS on the Intel machines the tests were written on accumulates over
  anchors in ascending anchor index with fused multiply-adds; we replay that chain
  (``acc = fl32(acc + w * z)``, the product exact in float64) over the shared anchors sorted by
  anchor id. The comparison is with ``float32(1e-5)``, as numpy does for a float32 array and a
  Python float. The BLAS's own order depends on the CPU (on AMD EPYC its values differ from the
  chain by up to 2 ulps), so the released matrix itself is not machine-independent; the tests hold
  the values to 4 ulps of the local dense product and the thresholded graph to exact equality.

Fast paths that do not change a single bit: a pair without a shared anchor has ``A_s = 0``; if
every term ``fl32(w_ik * min_j z_jk)`` of row i already exceeds the threshold, any shared anchor
gives ``SS_s = 1`` (the FMA chain never decreases); otherwise a plain float32 sum decides, and
only values within a relative 1e-5 of the threshold replay the exact chain.

Differences from the released code, on purpose:

* Anchors that no video has in its s-list (empty column of ``Z_s``) make the released code divide
  0 by 0 and turn the whole matrix into NaN (every pair then tags 0 and DKPH's positive sampling
  crashes). They cannot contribute to any pair, so we simply ignore them. Likewise an anchor whose
  column sums to 0 because every weight underflowed contributes 0 instead of NaN.
* Squared distances below 0 (round-off from ``|x|^2 + |y|^2 - 2xy`` or faiss) are clipped to 0
  exactly as the released ``pdist2`` does.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AnchorGraph",
    "anchor_graph",
    "nearest_anchors",
    "RULES",
    "CLASS_NONE",
    "CLASS_FALLBACK",
    "CLASS_POSITIVE",
    "CLASS_NEGATIVE",
]

RULES = ("bth", "nph", "gaussian")
BTH_LEVELS = (3, 4, 5)
#: ``Adj > 1e-5`` on a float32 matrix compares with float32(1e-5) (numpy casts the Python scalar).
BTH_THRESHOLD = np.float32(1e-5)

#: Pair classes used by the sampler (they mirror the released ``adj`` values DKPH samples from).
CLASS_NONE = -1  # never sampled (released adj in {-2, -1, 3})
CLASS_FALLBACK = 0  # negative fallback when an item has no CLASS_NEGATIVE partner (released adj == 0)
CLASS_POSITIVE = 1  # "similar" (released adj == 1)
CLASS_NEGATIVE = 2  # "middle distance" dissimilar (released adj == 2)

_FORMAT = "vhindex.anchor_graph"
_FORMAT_VERSION = 1
_PAIR_BLOCK = 1 << 16


@dataclasses.dataclass(frozen=True)
class AnchorLevel:
    """One truncated anchor graph ``Z_s`` (every video linked to its ``s`` nearest anchors).

    Attributes:
        s: anchors per video.
        ids: ``(N, s)`` int32, each row's anchor ids sorted **ascending by anchor id** (the order
            in which the released float32 GEMM accumulates).
        z: ``(N, s)`` weights aligned with ``ids`` (softmax over the row; float32 for ``"bth"``).
        w: ``(N, s)`` ``z / colsum[ids]`` (for ``"bth"`` exactly the released float32 ``Z @ D``).
        colsum: ``(k,)`` column sums of ``Z_s`` (``Lambda``).
        bandwidth: the kernel bandwidth (``sigma`` for BTH, ``t`` for NPH).
        indptr: ``(k + 1,)`` int64 CSR offsets of the inverted lists, or None when not built.
        members: ``(N s,)`` int32 videos of each anchor, ascending within an anchor, or None.
    """

    s: int
    ids: np.ndarray
    z: np.ndarray
    w: np.ndarray
    colsum: np.ndarray
    bandwidth: float
    indptr: np.ndarray | None = None
    members: np.ndarray | None = None

    @property
    def list_lengths(self) -> np.ndarray:
        """``(k,)`` int64 number of videos in each anchor's inverted list."""
        if self.indptr is None:
            raise ValueError(f"level s={self.s} has no inverted lists")
        return np.diff(self.indptr)

    def members_of(self, anchor: int) -> np.ndarray:
        """The videos that have ``anchor`` among their ``s`` nearest anchors (ascending)."""
        if self.indptr is None or self.members is None:
            raise ValueError(f"level s={self.s} has no inverted lists")
        return self.members[self.indptr[anchor] : self.indptr[anchor + 1]]

    def affinity(self, i: np.ndarray, j: np.ndarray, *, emulate_float32: bool) -> tuple[np.ndarray, np.ndarray]:
        """``A_s(i, j)`` for pairs, and the number of anchors each pair shares.

        Args:
            i: ``(P,)`` int row videos.
            j: ``(P,)`` int column videos.
            emulate_float32: replay the released float32 FMA accumulation (returns float32);
                otherwise sum in float64.

        Returns:
            ``(values (P,), shared (P,) int)``.
        """
        ii = self.ids[i]
        jj = self.ids[j]
        zj = self.z[j]
        # zm[p, c]: z_j at the anchor i has in slot c, or 0 (a row never repeats an anchor)
        zm = np.zeros(ii.shape, zj.dtype)
        shared = np.zeros(ii.shape[0], np.intp)
        for c in range(self.s):
            eq = ii == jj[:, c : c + 1]
            zm += eq * zj[:, c : c + 1]
            shared += eq.sum(axis=1)
        if not emulate_float32:
            return (self.w[i] * zm).sum(axis=1), shared
        prod = self.w[i].astype(np.float64) * zm.astype(np.float64)  # exact: 24 + 24 bits < 53
        acc = prod[:, 0].astype(np.float32)
        for c in range(1, self.s):
            acc = (acc + prod[:, c]).astype(np.float32)  # fl32(acc + w*z): one fused multiply-add
        return acc, shared


    def exceeds(self, i: np.ndarray, j: np.ndarray, threshold: np.float32) -> np.ndarray:
        """``affinity(i, j, emulate_float32=True) > threshold``, computed fast.

        A plain float32 sum differs from the emulated FMA chain by a few float32 ulps at most, so
        only pairs within a relative 1e-5 of the threshold are recomputed exactly.

        Args:
            i: ``(P,)`` int row videos.
            j: ``(P,)`` int column videos.
            threshold: the float32 threshold.

        Returns:
            ``(P,)`` bool.
        """
        ii = self.ids[i]
        jj = self.ids[j]
        zj = self.z[j]
        wi = self.w[i]
        approx = np.zeros(ii.shape[0], np.float32)
        jj_cols = [jj[:, b] for b in range(self.s)]
        for a in range(self.s):
            col = ii[:, a]
            zm = np.zeros(ii.shape[0], np.float32)
            for b in range(self.s):
                zm += (col == jj_cols[b]) * zj[:, b]
            approx += wi[:, a] * zm
        out = approx > threshold
        near = np.nonzero(np.abs(approx - threshold) <= threshold * np.float32(1e-5))[0]
        if near.size:
            vals, _ = self.affinity(i[near], j[near], emulate_float32=True)
            out[near] = vals > threshold
        return out


def _as_index_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array of video indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class AnchorGraph:
    """The anchor graph of ``N`` videos over ``k`` anchors, kept implicit (memory ``O(N a)``).

    Build it with :meth:`from_neighbors` (precomputed nearest-anchor lists, e.g. from the Dask
    layer) or :func:`anchor_graph` (embeddings + anchors). Query any entry with
    :meth:`adjacency` / :meth:`tags`; :class:`vhindex.graph.pairs.PairSampler` draws training pairs.

    Rules (``rule=``):

    * ``"bth"`` (default): the released BTH/DKPH/MCMSH matrix ``2 (SS5 - SS4) + SS3``, reproduced
      bit for bit (see the module docstring). Needs 5 anchors per video.
    * ``"nph"``: NPH (Li et al., eq. 13-14): ``Y_ij = exp(-|y_i - u_j| / t)`` normalised over the
      ``a`` nearest anchors (plain l2 distance, not squared), ``A = Y Lambda^-1 Y^T`` in float64,
      ``S_ij = +1 if A_ij > 0 else -1``. Parameters ``a`` (default 3, NPH's setting) and ``t``
      (default: the mean l2 distance to the ``a``-th nearest anchor -- our choice, NPH does not
      state one). ``S = +1`` exactly when i and j share one of their ``a`` anchors.
    * ``"gaussian"``: **an interpretation** of DKPH's "Gaussian-adaptive" graph, whose derivation
      is not public. ``A`` is BTH's kernel graph with ``a`` anchors (default 3) in float64, no
      1e-5 threshold. For each video i we fit a Gaussian ``(mu_i, sd_i)`` to the nonzero values of
      row ``A(i, .)``, i.e. over the videos sharing one of i's anchors (i included), and set
      ``+1`` where ``A_ij > 0`` and ``A_ij >= mu_i + lam sd_i``, ``-1`` where ``0 < A_ij <= mu_i - lam sd_i`` and
      ``0`` elsewhere (``lam`` default 0.5). Row statistics are exact and ``O(N a^2)``:
      ``sum_j A_ij = sum_k z_ik``, ``sum_j A_ij^2 = w_i^T (Z^T Z) w_i`` and the support size by
      inclusion-exclusion over shared anchor subsets. The rule is asymmetric (row statistics).

    Attributes:
        rule: the rule name.
        params: the rule's resolved parameters (JSON-serialisable).
        num_videos: ``N``.
        num_anchors: ``k``.
        levels: ``{s: AnchorLevel}``.
    """

    def __init__(self, *, rule: str, params: dict[str, Any], num_anchors: int, anchor_ids: np.ndarray,
                 sqdists: np.ndarray, levels: dict[int, AnchorLevel], row_stats: tuple[np.ndarray, np.ndarray] | None):
        self.rule = rule
        self.params = params
        self.num_anchors = num_anchors
        self.num_videos = int(anchor_ids.shape[0])
        self.levels = levels
        self._anchor_ids = anchor_ids
        self._sqdists = sqdists
        self._row_stats = row_stats  # gaussian rule: (mu, sd) per video
        # bth: per level, videos i for which A_s(i, j) > threshold for EVERY j sharing an anchor
        # (the FMA chain is monotone, so A_s(i, j) >= fl32(w_ik * min over k's list of z_jk)).
        self._exact_share: dict[int, np.ndarray] = {}
        if rule == "bth":
            for s, lv in levels.items():
                zmin = np.full(num_anchors, np.inf, lv.z.dtype)
                np.minimum.at(zmin, lv.ids.ravel(), lv.z.ravel())
                bound = (lv.w.astype(np.float64) * zmin[lv.ids].astype(np.float64)).astype(np.float32)
                self._exact_share[s] = (bound > BTH_THRESHOLD).all(axis=1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_neighbors(cls, anchor_ids: np.ndarray, sqdists: np.ndarray, num_anchors: int, *, rule: str = "bth",
                       **rule_params: Any) -> AnchorGraph:
        """Build the graph from each video's nearest anchors, in ``O(N a)`` time and memory.

        Args:
            anchor_ids: ``(N, a_max)`` int, each row's nearest anchors, nearest first, distinct,
                ties ordered by lower anchor id (as the released iterated ``argmin``).
            sqdists: ``(N, a_max)`` squared euclidean distances matching ``anchor_ids``
                (nondecreasing along a row; tiny negatives from round-off are clipped to 0).
            num_anchors: ``k``, the number of anchors (ids must lie in ``[0, k)``).
            rule: ``"bth"``, ``"nph"`` or ``"gaussian"`` (see the class docstring).
            **rule_params: ``a`` (nph, gaussian), ``t`` (nph), ``lam`` (gaussian).

        Returns:
            The graph.

        Raises:
            ValueError: on an unknown rule or parameter, empty input, mismatched shapes, too few
                anchor columns or anchors for the rule, ids out of range or repeated in a row,
                NaN / infinite / unsorted distances, or a zero bandwidth.
        """
        if rule not in RULES:
            raise ValueError(f"unknown graph rule {rule!r}; use one of {RULES}")
        params = _resolve_params(rule, rule_params)
        need = 5 if rule == "bth" else int(params["a"])
        ids, sq = _validate_neighbors(anchor_ids, sqdists, num_anchors, need)
        k = int(num_anchors)
        levels: dict[int, AnchorLevel] = {}
        row_stats = None
        if rule == "bth":
            for s in BTH_LEVELS:
                levels[s] = _bth_level(ids, sq, k, s, with_lists=s in (3, 5))
        elif rule == "nph":
            a = int(params["a"])
            dist = np.sqrt(sq[:, :a])
            t = params["t"]
            if t is None:
                t = float(np.mean(dist[:, a - 1]))
                params["t"] = t
            if not t > 0:
                raise ValueError(f"NPH bandwidth t={t} must be > 0 (every video sits on its anchors?); pass t=...")
            logits = -dist / t
            logits -= logits.max(axis=1, keepdims=True)
            y = np.exp(logits)
            y /= y.sum(axis=1, keepdims=True)
            levels[a] = _float64_level(ids[:, :a], y, k, t)
        else:  # gaussian
            a = int(params["a"])
            val = np.ascontiguousarray(sq[:, :a], dtype=np.float64)
            sigma = float(np.mean(np.sqrt(val[:, a - 1])) / np.sqrt(2))
            if not sigma > 0:
                raise ValueError("bandwidth sigma is 0: every video coincides with its nearest anchors")
            logits = -val / (2 * sigma**2)
            logits -= logits.max(axis=1, keepdims=True)
            z = np.exp(logits)
            z /= z.sum(axis=1, keepdims=True)
            level = _float64_level(ids[:, :a], z, k, sigma)
            levels[a] = level
            row_stats = _gaussian_row_stats(level)
        return cls(rule=rule, params=params, num_anchors=k, anchor_ids=ids, sqdists=sq, levels=levels,
                   row_stats=row_stats)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The graph as plain arrays + a JSON-serialisable dict (e.g. Parquet columns + a JSON file).

        Everything else is a deterministic ``O(N a)`` function of these, rebuilt by
        :meth:`from_arrays`.

        Returns:
            ``(arrays, meta)``: ``arrays["anchor_ids"]`` ``(N, a)`` int32 and ``arrays["sqdists"]``
            ``(N, a)`` float64 (nearest first); ``meta`` holds format, version, rule, params,
            ``num_anchors``, ``num_videos`` and the bandwidth of every level (checked on load).
        """
        arrays = {"anchor_ids": self._anchor_ids, "sqdists": self._sqdists}
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "rule": self.rule,
            "params": dict(self.params),
            "num_anchors": self.num_anchors,
            "num_videos": self.num_videos,
            "bandwidths": {str(s): float(lv.bandwidth) for s, lv in self.levels.items()},
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> AnchorGraph:
        """Rebuild a graph written by :meth:`to_arrays`.

        Args:
            arrays: ``{"anchor_ids": ..., "sqdists": ...}``.
            meta: the dict from :meth:`to_arrays` (e.g. read back from JSON).

        Returns:
            The same graph.

        Raises:
            ValueError: when ``meta`` is not ours, or the rebuilt graph does not match it.
        """
        if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"not a {_FORMAT} v{_FORMAT_VERSION} description: format={meta.get('format')!r}, "
                             f"version={meta.get('version')!r}")
        for key in ("anchor_ids", "sqdists"):
            if key not in arrays:
                raise ValueError(f"arrays lacks {key!r}; pass the dict returned by to_arrays()")
        params = dict(meta.get("params", {}))
        g = cls.from_neighbors(np.asarray(arrays["anchor_ids"]), np.asarray(arrays["sqdists"]),
                               int(meta["num_anchors"]), rule=meta["rule"], **params)
        if g.num_videos != int(meta["num_videos"]):
            raise ValueError(f"arrays hold {g.num_videos} videos but meta says {meta['num_videos']}")
        for s, bw in meta.get("bandwidths", {}).items():
            if int(s) not in g.levels or g.levels[int(s)].bandwidth != bw:
                raise ValueError(f"rebuilt bandwidth of level s={s} differs from the stored {bw}: arrays and meta "
                                 "do not belong together")
        return g

    # ------------------------------------------------------------------ queries
    @property
    def anchor_ids(self) -> np.ndarray:
        """``(N, a)`` int32 each video's nearest anchors, nearest first (read-only view)."""
        v = self._anchor_ids.view()
        v.flags.writeable = False
        return v

    @property
    def num_neighbors(self) -> int:
        """Anchor columns kept per video."""
        return int(self._anchor_ids.shape[1])

    def adjacency(self, i: Any, j: Any) -> np.ndarray:
        """Entries of the rule's matrix for pairs ``(i, j)`` (broadcast), never forming ``N x N``.

        Args:
            i: int or array of row videos.
            j: int or array of column videos (broadcast against ``i``).

        Returns:
            int8 array of the broadcast shape: for ``"bth"`` the released ``2 (SS5 - SS4) + SS3``
            (normally 0, 1 or 2; -2, -1 and 3 occur because thresholding is not monotone in s);
            for ``"nph"`` ``S`` in {-1, +1}; for ``"gaussian"`` ``A_hat`` in {-1, 0, +1}.
        """
        return self._blockwise(i, j, self._adjacency_flat)

    def tags(self, i: Any, j: Any) -> np.ndarray:
        """Pair tags in {-1, 0, +1}: +1 similar, -1 dissimilar, 0 neither.

        For ``"bth"`` +1 where ``adjacency == 1`` and -1 where ``adjacency == 2`` ("middle
        distance"), else 0; for ``"nph"`` and ``"gaussian"`` the adjacency itself.

        Args:
            i: int or array of row videos.
            j: int or array of column videos (broadcast against ``i``).

        Returns:
            int8 array of the broadcast shape.
        """
        adj = self.adjacency(i, j)
        if self.rule != "bth":
            return adj
        out = np.zeros_like(adj)
        out[adj == 1] = 1
        out[adj == 2] = -1
        return out

    def pair_classes(self, i: Any, j: Any) -> np.ndarray:
        """The sampler's classes of pairs: ``CLASS_POSITIVE``, ``CLASS_NEGATIVE``, ``CLASS_FALLBACK``, ``CLASS_NONE``.

        ``"bth"``: released adj 1 / 2 / 0 / other. ``"nph"``: S +1 / -1 (no fallback class).
        ``"gaussian"``: +1 / -1 / 0.

        Args:
            i: int or array of row videos.
            j: int or array of column videos (broadcast against ``i``).

        Returns:
            int8 array of the broadcast shape.
        """
        return self._classes_of(self.adjacency(i, j))

    def _pair_classes_flat(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """:meth:`pair_classes` for trusted 1-D int64 index arrays (no checks; for the sampler)."""
        if i.size <= _PAIR_BLOCK:
            return self._classes_of(self._adjacency_flat(i, j))
        return self._classes_of(self._blockwise(i, j, self._adjacency_flat))

    def _pair_is_flat(self, i: np.ndarray, j: np.ndarray, pair_class: int) -> np.ndarray:
        """``_pair_classes_flat(i, j) == pair_class``, evaluating as few levels as possible (bth)."""
        if self.rule != "bth" or pair_class not in (CLASS_POSITIVE, CLASS_NEGATIVE):
            return self._pair_classes_flat(i, j) == pair_class
        keep = np.arange(i.shape[0])
        if pair_class == CLASS_POSITIVE:  # adj == 1: SS3 and SS4 == SS5
            keep = keep[self._ss_flat(i, j, 3)]
            ik, jk = i[keep], j[keep]
            keep = keep[self._ss_flat(ik, jk, 4) == self._ss_flat(ik, jk, 5)]
        else:  # adj == 2: SS5 and not SS4 and not SS3
            keep = keep[self._ss_flat(i, j, 5)]
            keep = keep[~self._ss_flat(i[keep], j[keep], 4)]
            keep = keep[~self._ss_flat(i[keep], j[keep], 3)]
        out = np.zeros(i.shape[0], bool)
        out[keep] = True
        return out

    def _ss_flat(self, i: np.ndarray, j: np.ndarray, s: int) -> np.ndarray:
        """``SS_s(i, j)`` (released ``A_s > 1e-5``) for trusted index arrays.

        ``SS_s = 0`` without a shared anchor among the two s-lists (prefixes of the rank-ordered
        5-lists); with one, it is 1 outright when i is "exact" at level s (each of its terms alone
        exceeds the threshold), otherwise the float32 value decides.
        """
        ri = self._anchor_ids[i]
        rj = self._anchor_ids[j]
        rj_cols = [rj[:, b] for b in range(s)]
        share = np.zeros(i.shape[0], bool)
        for a in range(s):
            col = ri[:, a]
            for b in range(s):
                share |= col == rj_cols[b]
        need = np.nonzero(share & ~self._exact_share[s][i])[0]
        if need.size:
            share[need] = self.levels[s].exceeds(i[need], j[need], BTH_THRESHOLD)
        return share

    def _classes_of(self, adj: np.ndarray) -> np.ndarray:
        out = np.full(adj.shape, CLASS_NONE, np.int8)
        if self.rule == "bth":
            out[adj == 1] = CLASS_POSITIVE
            out[adj == 2] = CLASS_NEGATIVE
            out[adj == 0] = CLASS_FALLBACK
        else:
            out[adj == 1] = CLASS_POSITIVE
            out[adj == -1] = CLASS_NEGATIVE
            out[adj == 0] = CLASS_FALLBACK
        return out

    def candidate_level(self, pair_class: int) -> AnchorLevel | None:
        """The level whose inverted lists contain every partner of this class, or None (anywhere).

        ``"bth"``: positives need ``SS3 = 1`` (a shared anchor among the 3 nearest), negatives
        ``SS5 = 1`` (among the 5 nearest). ``"nph"``: positives share one of the ``a`` anchors,
        negatives are the rest. ``"gaussian"``: both +1 and -1 need ``A > 0``.

        Args:
            pair_class: one of the ``CLASS_*`` constants.

        Returns:
            The :class:`AnchorLevel` to draw candidates from, or None for "all videos".
        """
        if pair_class == CLASS_FALLBACK:
            return None
        if self.rule == "bth":
            return self.levels[3] if pair_class == CLASS_POSITIVE else self.levels[5]
        level = self.levels[int(self.params["a"])]
        if self.rule == "nph":
            return level if pair_class == CLASS_POSITIVE else None
        return level

    def row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sd)`` per video of the ``"gaussian"`` rule (the fitted row Gaussians).

        Raises:
            ValueError: for the other rules.
        """
        if self._row_stats is None:
            raise ValueError(f"row_stats() belongs to rule 'gaussian', this graph uses {self.rule!r}")
        return self._row_stats

    # ------------------------------------------------------------------ internals
    def _blockwise(self, i: Any, j: Any, fn) -> np.ndarray:
        ii = _as_index_array(i, "i")
        jj = _as_index_array(j, "j")
        try:
            ii, jj = np.broadcast_arrays(ii, jj)
        except ValueError as e:
            raise ValueError(f"i {ii.shape} and j {jj.shape} do not broadcast") from e
        shape = ii.shape
        fi = ii.ravel()
        fj = jj.ravel()
        n = self.num_videos
        for name, arr in (("i", fi), ("j", fj)):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                bad = arr[(arr < 0) | (arr >= n)][0]
                raise IndexError(f"video index {name}={bad} out of range [0, {n})")
        out = np.empty(fi.shape, np.int8)
        for start in range(0, fi.size, _PAIR_BLOCK):
            sl = slice(start, start + _PAIR_BLOCK)
            out[sl] = fn(fi[sl], fj[sl])
        return out.reshape(shape)

    def _adjacency_flat(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        if self.rule == "bth":
            ss = {s: self._ss_flat(i, j, s).view(np.int8) for s in BTH_LEVELS}
            return 2 * (ss[5] - ss[4]) + ss[3]
        level = self.levels[int(self.params["a"])]
        a, _ = level.affinity(i, j, emulate_float32=False)
        if self.rule == "nph":
            return np.where(a > 0, 1, -1).astype(np.int8)
        mu, sd = self._row_stats
        lam = float(self.params["lam"])
        out = np.zeros(i.shape, np.int8)
        out[(a > 0) & (a >= mu[i] + lam * sd[i])] = 1
        out[(a > 0) & (a <= mu[i] - lam * sd[i])] = -1
        return out


# ---------------------------------------------------------------------- helpers
def _resolve_params(rule: str, given: dict[str, Any]) -> dict[str, Any]:
    allowed = {"bth": {}, "nph": {"a": 3, "t": None}, "gaussian": {"a": 3, "lam": 0.5}}[rule]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"rule {rule!r} takes parameters {sorted(allowed) or 'none'}; got unexpected {unknown}")
    params = {**allowed, **given}
    if "a" in params:
        a = params["a"]
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1:
            raise ValueError(f"a={a!r} must be a positive int (anchors per video)")
        params["a"] = int(a)
    if params.get("t") is not None:
        t = float(params["t"])
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"t={params['t']!r} must be a finite positive bandwidth (or None for the default)")
        params["t"] = t
    if "lam" in params:
        lam = float(params["lam"])
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam={params['lam']!r} must be a finite number >= 0 (standard deviations)")
        params["lam"] = lam
    return params


def _validate_neighbors(anchor_ids: Any, sqdists: Any, num_anchors: Any, need: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(anchor_ids)
    sq = np.asarray(sqdists)
    if isinstance(num_anchors, bool) or not isinstance(num_anchors, (int, np.integer)):
        raise TypeError(f"num_anchors must be an int, got {num_anchors!r}")
    k = int(num_anchors)
    if ids.ndim != 2 or sq.ndim != 2:
        raise ValueError(f"anchor_ids {ids.shape} and sqdists {sq.shape} must both be 2-D (N, a_max)")
    if ids.shape != sq.shape:
        raise ValueError(f"anchor_ids {ids.shape} and sqdists {sq.shape} must have the same shape (N, a_max)")
    if ids.shape[0] == 0:
        raise ValueError("no videos: anchor_ids has 0 rows")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"anchor_ids must be integers, got dtype {ids.dtype}")
    if sq.dtype.kind != "f":
        raise TypeError(f"sqdists must be floating point, got dtype {sq.dtype}")
    if k < need:
        raise ValueError(f"num_anchors={k} is smaller than the {need} anchors per video this rule needs; "
                         "use more anchors (k-means clusters) or fewer per video")
    if ids.shape[1] < need:
        raise ValueError(f"anchor_ids has {ids.shape[1]} anchors per video but this rule needs {need}; "
                         f"compute the {need} nearest anchors")
    if ids.min() < 0 or ids.max() >= k:
        bad = ids[(ids < 0) | (ids >= k)][0]
        raise ValueError(f"anchor id {bad} out of range [0, num_anchors={k})")
    if not np.isfinite(sq).all():
        row = int(np.nonzero(~np.isfinite(sq).all(axis=1))[0][0])
        raise ValueError(f"sqdists has NaN or infinite values (first in row {row}); check the embeddings")
    ids = np.ascontiguousarray(ids[:, :need], dtype=np.int32)
    sq = np.clip(np.ascontiguousarray(sq[:, :need], dtype=np.float64), 0, np.inf)
    if need > 1:
        if (np.diff(sq, axis=1) < 0).any():
            row = int(np.nonzero((np.diff(sq, axis=1) < 0).any(axis=1))[0][0])
            raise ValueError(f"sqdists row {row} is not sorted nearest first: {sq[row].tolist()}")
        srt = np.sort(ids, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            row = int(np.nonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))[0][0])
            raise ValueError(f"anchor_ids row {row} repeats an anchor: {ids[row].tolist()}")
    return ids, sq


def _inverted_lists(ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR anchor -> videos (videos ascending within each anchor)."""
    s = ids.shape[1]
    order = np.argsort(ids.ravel(), kind="stable")
    members = (order // s).astype(np.int32)
    indptr = np.zeros(k + 1, np.int64)
    np.cumsum(np.bincount(ids.ravel(), minlength=k), out=indptr[1:])
    return indptr, members


def _sorted_by_anchor(ids: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.argsort(ids, axis=1, kind="stable")
    return tuple(np.ascontiguousarray(np.take_along_axis(c, order, axis=1)) for c in (ids, *cols))


def _bth_level(ids_all: np.ndarray, sq_all: np.ndarray, k: int, s: int, *, with_lists: bool) -> AnchorLevel:
    """The released ``ZZ(data, anchors, s)`` + ``Z.sum(0)`` + ``Z @ diag(colsum**-1)`` in O(N s)."""
    n = ids_all.shape[0]
    # Same shapes, layouts and numpy expressions as the released code, so the same rounding.
    val = np.zeros((n, s))
    val[:] = sq_all[:, :s]
    dist = np.sqrt(val[:, s - 1])
    sigma = np.mean(dist) / np.sqrt(2)
    if not sigma > 0:
        raise ValueError(f"bandwidth sigma_{s} is 0: every video coincides with its {s} nearest anchors "
                         "(duplicate anchors at the data points?)")
    with np.errstate(over="ignore", invalid="ignore"):
        c = 2 * np.power(sigma, 2)
        exponent = -val / c
        shift = np.amin(exponent, 1, keepdims=True)
        denom = np.log(np.sum(np.exp(exponent - shift), 1, keepdims=True)) + shift
        val = np.exp(exponent - denom)
    z = val.astype(np.float32)  # Z = zeros(float32); Z[rows, pos] = val
    ids = np.ascontiguousarray(ids_all[:, :s])
    colsum = np.zeros(k, np.float32)
    np.add.at(colsum, ids.ravel(), z.ravel())  # row-major order == numpy's sequential Z.sum(0)
    with np.errstate(divide="ignore"):
        inv = colsum**-1
    inv[colsum == 0] = 0  # anchors nobody uses (or all-underflow columns): ignored, see module doc
    w = z * inv[ids]  # float32 * float32 -> fl32, exactly the released Z @ diag(colsum**-1)
    indptr = members = None
    if with_lists:
        indptr, members = _inverted_lists(ids, k)
    ids_s, z_s, w_s = _sorted_by_anchor(ids, z, w)
    return AnchorLevel(s=s, ids=ids_s, z=z_s, w=w_s, colsum=colsum, bandwidth=float(sigma), indptr=indptr,
                       members=members)


def _float64_level(ids: np.ndarray, z: np.ndarray, k: int, bandwidth: float) -> AnchorLevel:
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    colsum = np.bincount(ids.ravel(), weights=z.ravel(), minlength=k).astype(np.float64)
    with np.errstate(divide="ignore"):
        inv = np.where(colsum > 0, 1.0 / np.where(colsum > 0, colsum, 1.0), 0.0)
    w = z * inv[ids]
    indptr, members = _inverted_lists(ids, k)
    ids_s, z_s, w_s = _sorted_by_anchor(ids, z, w)
    return AnchorLevel(s=ids.shape[1], ids=ids_s, z=z_s, w=w_s, colsum=colsum, bandwidth=float(bandwidth),
                       indptr=indptr, members=members)


def _subset_keys(sub: np.ndarray, k: int) -> np.ndarray:
    """Row keys of ``(M, r)`` sorted anchor subsets (int64 mixed radix when it fits, else row ids)."""
    r = sub.shape[1]
    if r * math.log2(max(k, 2)) < 62:
        key = np.zeros(sub.shape[0], np.int64)
        for c in range(r):
            key = key * k + sub[:, c]
        return key
    _, inv = np.unique(sub, axis=0, return_inverse=True)
    return inv.ravel().astype(np.int64)


def _gaussian_row_stats(level: AnchorLevel) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the nonzero entries of every row of ``A = Z Lambda^-1 Z^T``, in O(N a^2)."""
    ids, z, w = level.ids, level.z, level.w
    n, a = ids.shape
    k = level.colsum.shape[0]
    # support size |{j : j shares an anchor with i}| by inclusion-exclusion over anchor subsets
    support = np.zeros(n, np.int64)
    for r in range(1, a + 1):
        combos = list(itertools.combinations(range(a), r))
        sub = ids[:, np.array(combos)].reshape(-1, r).astype(np.int64)  # ids rows are sorted
        keys = _subset_keys(sub, k)
        _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
        per_row = counts[inv.ravel()].reshape(n, len(combos)).sum(axis=1)
        support += per_row if r % 2 == 1 else -per_row
    total = (w * level.colsum[ids]).sum(axis=1)  # sum_j A_ij = sum_k w_ik Lambda_k
    # sum_j A_ij^2 = w_i^T G w_i,  G = Z^T Z restricted to anchor pairs some video has
    pi, pj = np.triu_indices(a)
    keys = ids[:, pi].astype(np.int64) * k + ids[:, pj]
    uniq, inv = np.unique(keys.ravel(), return_inverse=True)
    g = np.bincount(inv.ravel(), weights=(z[:, pi] * z[:, pj]).ravel(), minlength=uniq.size)
    gij = g[inv.ravel()].reshape(n, pi.size)
    mult = np.where(pi == pj, 1.0, 2.0)
    sumsq = (w[:, pi] * w[:, pj] * gij * mult).sum(axis=1)
    mu = total / support
    var = np.maximum(sumsq / support - mu**2, 0.0)
    return mu, np.sqrt(var)


# ---------------------------------------------------------------------- nearest anchors + entry point
def nearest_anchors(x: np.ndarray, anchors: np.ndarray, a: int, *, chunk_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``a`` nearest anchors of every row, as the released code computes them.

    Squared distances are ``|x|^2 + |u|^2 - 2 x.u`` in float64, clipped at 0, and the anchors are
    picked by ``a`` rounds of ``argmin`` (ties go to the lower anchor id) -- the released
    ``pdist2`` + ``ZZ`` selection, chunked over rows so memory stays ``O(chunk_rows k)``.

    Args:
        x: ``(N, d)`` embeddings.
        anchors: ``(k, d)`` anchors.
        a: anchors per row.
        chunk_rows: rows per chunk.

    Returns:
        ``(ids (N, a) int32, sqdists (N, a) float64)``, nearest first.

    Raises:
        ValueError: on empty input, mismatched dimensions, ``a > k``, or non-finite values.
    """
    x = np.asarray(x)
    u = np.asarray(anchors)
    if x.ndim != 2 or u.ndim != 2:
        raise ValueError(f"embeddings {x.shape} and anchors {u.shape} must both be 2-D")
    if x.shape[0] == 0 or u.shape[0] == 0:
        raise ValueError(f"empty input: {x.shape[0]} embeddings, {u.shape[0]} anchors")
    if x.shape[1] != u.shape[1]:
        raise ValueError(f"embeddings have dimension {x.shape[1]} but anchors have {u.shape[1]}; "
                         "anchors must live in the embedding space")
    if not 1 <= a <= u.shape[0]:
        raise ValueError(f"a={a} nearest anchors requested but there are {u.shape[0]} anchors")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows} must be >= 1")
    u64 = u.astype(np.float64)
    if not np.isfinite(u64).all():
        raise ValueError("anchors contain NaN or infinite values")
    yy = (u64**2).sum(1)
    n = x.shape[0]
    ids = np.empty((n, a), np.int32)
    sq = np.empty((n, a), np.float64)
    for start in range(0, n, chunk_rows):
        xc = x[start : start + chunk_rows].astype(np.float64)
        if not np.isfinite(xc).all():
            raise ValueError(f"embeddings contain NaN or infinite values (rows {start}..{start + len(xc) - 1})")
        xx = (xc**2).sum(1)
        d = np.clip(xx[:, None] + yy[None, :] - 2 * xc.dot(u64.T), 0, np.inf)
        rows = np.arange(d.shape[0])
        for c in range(a):
            p = np.argmin(d, 1)
            ids[start : start + len(rows), c] = p
            sq[start : start + len(rows), c] = d[rows, p]
            d[rows, p] = np.inf
    return ids, sq


def anchor_graph(embeddings: np.ndarray, anchors: np.ndarray, rule: str = "bth", **params: Any) -> AnchorGraph:
    """Build the anchor graph of ``embeddings`` over ``anchors`` (exact nearest anchors, chunked).

    Args:
        embeddings: ``(N, d)`` video embeddings (e.g. the teacher's latent features).
        anchors: ``(k, d)`` anchors (e.g. k-means centroids).
        rule: ``"bth"`` (default), ``"nph"`` or ``"gaussian"``; see :class:`AnchorGraph`.
        **params: the rule's parameters (``a``, ``t``, ``lam``).

    Returns:
        The :class:`AnchorGraph`.

    Raises:
        ValueError: on bad input (see :func:`nearest_anchors` and :meth:`AnchorGraph.from_neighbors`).
    """
    if rule not in RULES:
        raise ValueError(f"unknown graph rule {rule!r}; use one of {RULES}")
    need = 5 if rule == "bth" else int(_resolve_params(rule, params)["a"])
    k = np.asarray(anchors).shape[0] if np.ndim(anchors) == 2 else 0
    if k and k < need:
        raise ValueError(f"{k} anchors but rule {rule!r} links every video to {need}; use more anchors")
    ids, sq = nearest_anchors(embeddings, anchors, need)
    return AnchorGraph.from_neighbors(ids, sq, k, rule=rule, **params)
