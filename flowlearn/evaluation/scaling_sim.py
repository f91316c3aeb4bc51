"""Training one model on more than one worker, simulated: data-parallel replicas with
periodic averaging, and parameter shards by hashed-feature range, against the one trainer
the job runs per model today (docs/scaling.md).

Flink-free and sequential: the workers run one after another in this process, each with the
real learning core (:class:`~flowlearn.core.training.ModelTrainer` and its batch cuts for
replicas; the core's feature transform, optimizers and residuals for shards), and the
simulation times each worker's share to estimate what running them side by side would take.

**Replicas** (:class:`DataParallel`). Sample ``i`` of the model's stream (``i`` its position,
which the design assigns upstream) goes to replica ``i mod K`` (``partition="round_robin"``)
or to the replica its event id hashes to (``"hash"``). The stream is cut into rounds of
``period`` samples, a *sample count* clock: within a round each replica trains its share,
cut into batches as the job cuts them (``ModelTrainer.next_batch_size``, the last one
partial at the round's end); then the replicas' states are merged in replica order, and every
replica starts the next round from the merged model, which is what is published (and what
scores the next round's samples: the *served* loss). Merges:

- ``"mean"``: the replicas' parameters and optimizer buffers averaged, weighted by the
  samples each trained in the round (model averaging, "local SGD");
- ``"sum"``: the merged model is the last one plus every replica's change (each sample's
  update applied once, computed on a model up to one round stale).

The feature statistics (count, mean and squared deviations per column) are pooled exactly
in both: they describe all samples, whatever worker saw them.

**Shards** (:class:`Sharded`). Shard ``j`` of ``K`` owns a contiguous range of the columns
(for a hashed model, a range of hashed features) with their coefficients, optimizer buffers
and statistics; a coordinator owns the intercept. Each batch is one synchronous round trip:
the shards send their partial scores, the coordinator sums them in shard order, computes the
loss's residual and sends it back, and each shard steps its own coordinates (a second round
trip when ``clip_grad_norm`` needs the global gradient norm). Every optimizer here is
per-coordinate, so this is the unsharded model's arithmetic, up to the order of the sums.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(512, 4))
>>> y = (X[:, 0] > 0).astype(np.float64)
>>> spec = {"type": "logistic", "n_features": 4, "batch_size": 64}
>>> single = train_single(spec, X, y)
>>> one = DataParallel(spec, replicas=1, period=64)  # merged (published) every batch
>>> one.feed(X, y)
>>> bool(np.array_equal(one.finish().losses, single.losses))  # one replica: the job's trainer
True
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flowlearn.core import optim
from flowlearn.core.linear import LogisticRegression, SoftmaxRegression
from flowlearn.core.model_types import model_type
from flowlearn.core.pipeline import FeatureTransform, Pipeline
from flowlearn.core.training import ModelTrainer, build_model, ramp_size

__all__ = ["DataParallel", "Run", "Sharded", "replica_of", "train_single"]

Partition = Literal["round_robin", "hash"]
Merge = Literal["mean", "sum"]
PARTITIONS: tuple[str, ...] = ("round_robin", "hash")
MERGES: tuple[str, ...] = ("mean", "sum")
_FLOAT_BYTES = 8


@dataclass(frozen=True)
class Run:
    """One way of training a model over one stream.

    ``losses`` and ``errors`` (0/1, classifiers; None otherwise) are, per sample, what the
    served model (the published one) scored before the sample was learnt. ``seconds`` is the
    training time on the critical path (for parallel workers: the slowest worker of each
    round or batch, plus the merge or coordinator), ``work_seconds`` every worker's time
    added up; ``messages`` and ``message_bytes`` count what the workers would exchange
    (float64 payloads only). ``model`` is the final served model; ``max_share`` the most
    samples one worker trained. ``worker_losses`` (replicas) are the losses each replica's
    own test step saw, at the samples' stream positions.
    """

    losses: np.ndarray
    errors: np.ndarray | None
    seconds: float
    work_seconds: float
    messages: int
    message_bytes: int
    model: Pipeline
    max_share: int
    worker_losses: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return math.nan if self.errors is None else 1.0 - float(np.mean(self.errors))

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses))


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    s = dict(spec)
    if int(s.get("batch_size", 0)) <= 0:
        raise ValueError("the simulation needs a spec with batch_size > 0 (the job's is resolved)")
    kind = model_type(str(s.get("type", "logistic")))
    if kind.tree or kind.bandit or kind.self_tuning:
        raise ValueError(f"the simulation trains plain linear models, not {kind.name!r}")
    return s


def train_single(spec: Mapping[str, Any], X: np.ndarray, y: np.ndarray) -> Run:
    """The job's one trainer per model: ``ModelTrainer.train_samples`` (the job's batch
    cut); the served loss is the trainer's own test step (the version before each batch)."""
    trainer = ModelTrainer.create("single", _spec(spec))
    losses, errors, seconds = [], [], 0.0
    start = 0
    while start < len(y):
        end = min(len(y), start + trainer.next_batch_size())
        t0 = time.perf_counter()
        result = trainer.train_batch(X[start:end], y[start:end])
        seconds += time.perf_counter() - t0
        if result.losses is None:
            raise ValueError(f"batch at sample {start} not scored: {result.rejected}")
        losses.append(result.losses)
        if result.errors is not None:
            errors.append(result.errors)
        start = end
    return Run(
        losses=np.concatenate(losses) if losses else np.empty(0),
        errors=np.concatenate(errors) if errors else None,
        seconds=seconds,
        work_seconds=seconds,
        messages=0,
        message_bytes=0,
        model=trainer.model,
        max_share=len(y),
        worker_losses=np.concatenate(losses) if losses else np.empty(0),
    )


def replica_of(event_id: str, replicas: int) -> int:
    """The replica an event id goes to under ``partition="hash"``: a keyed-free BLAKE2b of
    the UTF-8 id (Python's ``hash`` of a string changes from process to process, and a
    replayed job must send each sample where it went the first time).

    >>> replica_of("e-17", 4), replica_of("e-17", 4)
    (0, 0)
    """
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % replicas


# ---------------------------------------------------------------------------- replicas


def _unpool(total: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The statistics ``[count, mean, m2]`` (rows) of the samples that took ``base`` to
    ``total`` (the inverse of the pooled update FeatureTransform.learn_many makes)."""
    n, mean, m2 = total
    n0, mean0, m20 = base
    nb = n - n0
    mb = np.divide(n * mean - n0 * mean0, nb, out=np.zeros_like(nb), where=nb > 0)
    delta = mb - mean0
    share = np.divide(n0 * nb, n, out=np.zeros_like(n), where=n > 0)
    m2b = np.where(nb > 0, m2 - m20 - delta * delta * share, 0.0)
    return np.stack([nb, mb, m2b])


def _pool(acc: np.ndarray, part: np.ndarray) -> np.ndarray:
    """``acc`` and ``part`` (rows ``[count, mean, m2]``) pooled, as FeatureTransform.learn_many
    merges a batch into its statistics."""
    n, mean, m2 = acc
    nb, mb, m2b = part
    total = n + nb
    delta = mb - mean
    share = np.divide(nb, total, out=np.zeros_like(total), where=total > 0)
    return np.stack([total, mean + delta * share, m2 + m2b + delta * delta * n * share])


def _l1_vector(learner: Any) -> np.ndarray:
    """A linear model's per-coordinate L1 strengths (the intercept's 0), as its step uses."""
    l1 = np.zeros(learner.weights_vector().size)
    l1[: learner.n_features * max(1, getattr(learner, "n_classes", 1))] = learner.l1
    return l1


def _optimizer_state(meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = meta["model"]["optimizer_state"]
    return state


class DataParallel:
    """``replicas`` trainers of one model, merged every ``period`` samples of its stream.

    Feed the stream in any cut (:meth:`feed`, as often as wanted), then :meth:`finish`; the
    result depends on the samples, their order and event ids only.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        replicas: int,
        period: int,
        *,
        partition: Partition = "round_robin",
        merge: Merge = "mean",
    ) -> None:
        if replicas < 1 or period < 1:
            raise ValueError(f"replicas and period must be >= 1, got {replicas} and {period}")
        if partition not in PARTITIONS or merge not in MERGES:
            raise ValueError(f"partition in {PARTITIONS} and merge in {MERGES}")
        self.spec = _spec(spec)
        self.period = int(period)
        self.partition = partition
        self.merge = merge
        self._replicas = [ModelTrainer.create(f"replica-{k}", self.spec) for k in range(replicas)]
        #: The published model: the last merge (what serves the current round).
        self._served = build_model(self.spec)
        self._classifier = model_type(self.spec["type"]).classifier
        self._base = self._state_copy(self._served)
        #: The samples of the round so far, as fed: (X, y, event ids).
        self._round: list[tuple[np.ndarray, np.ndarray, Sequence[str] | None]] = []
        self._in_round = 0
        self._position = 0
        self._young = True
        self._round_length = self._next_round_length()
        #: (stream positions, the replica's test-step losses on them), round by round.
        self._worker_losses: list[tuple[np.ndarray, np.ndarray]] = []
        self._losses: list[np.ndarray] = []
        self._errors: list[np.ndarray] = []
        self._seconds = self._work = 0.0
        self._messages = self._bytes = 0
        self._shares = np.zeros(replicas, dtype=np.int64)

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    @staticmethod
    def _state_copy(model: Pipeline) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = model.state_dict()
        return {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}, meta

    def feed(self, X: np.ndarray, y: np.ndarray, event_ids: Sequence[str] | None = None) -> None:
        """The next samples of the stream (``event_ids``: one per sample, needed by
        ``partition="hash"``)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if event_ids is None and self.partition == "hash":
            raise ValueError('partition="hash" routes by event id: pass event_ids')
        start = 0
        while start < len(y):
            end = min(len(y), start + self._round_length - self._in_round)
            self._take(
                X[start:end], y[start:end], None if event_ids is None else event_ids[start:end]
            )
            self._in_round += end - start
            self._position += end - start
            if self._in_round == self._round_length:
                self._end_round()
            start = end

    def _take(self, X: np.ndarray, y: np.ndarray, ids: Sequence[str] | None) -> None:
        self._round.append((X, y, ids))

    def _route(self, first: int, n: int, ids: Sequence[str] | None) -> np.ndarray:
        """The replica of each of ``n`` samples from stream position ``first``."""
        if self._young:
            # A young model (the job's ramp: batches under batch_size) trains on replica 0
            # alone, merged and published batch by batch as the job's trainer does;
            # replication starts with its first full batch.
            return np.zeros(n, dtype=np.int64)
        if self.partition == "round_robin" or ids is None:
            return (first + np.arange(n)) % self.replicas
        return np.array([replica_of(str(e), self.replicas) for e in ids], dtype=np.int64)

    def _end_round(self) -> None:
        """The served model scores the round's samples (scored whole, so that the bits
        do not depend on how the stream was fed); every replica trains its share of the
        round; then the merge."""
        parts, self._round = self._round, []
        X = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        ids = None if parts[0][2] is None else [e for p in parts for e in p[2] or ()]
        self._losses.append(self._served.loss_many(X, y))
        if self._classifier:
            self._errors.append((self._served.predict_many(X) != y).astype(np.float64))
        first = self._position - len(y)
        route = self._route(first, len(y), ids)
        counts, slowest = [], 0.0
        for k, trainer in enumerate(self._replicas):
            mine = np.flatnonzero(route == k)
            Xk, yk = X[mine], y[mine]
            losses = []
            t0 = time.perf_counter()
            start = 0
            while start < len(yk):
                end = min(len(yk), start + trainer.next_batch_size())
                result = trainer.train_batch(Xk[start:end], yk[start:end])
                scored = result.losses
                losses.append(np.full(end - start, np.nan) if scored is None else scored)
                start = end
            took = time.perf_counter() - t0
            if len(mine):
                self._worker_losses.append((first + mine, np.concatenate(losses)))
            self._work += took
            slowest = max(slowest, took)
            counts.append(len(mine))
            self._shares[k] += len(mine)
        if sum(counts):
            merge, load = self._merge(counts)
            # The averaging is the merging worker's; each replica loads the result at once.
            self._seconds += merge + load
            self._work += merge + load * self.replicas
        self._seconds += slowest
        self._in_round = 0
        self._round_length = self._next_round_length()

    def _next_round_length(self) -> int:
        """``period``; while the model is young, its batch (the job's ramp,
        :func:`~flowlearn.core.training.ramp_size` of the stream position), so that the
        first merged versions come after 1, 2, 3... samples, as the job's do."""
        batch_size = int(self.spec["batch_size"])
        young = ramp_size(self._position, batch_size)
        self._young = young < batch_size
        return min(young, self.period) if self._young else self.period

    def _merge(self, counts: list[int]) -> tuple[float, float]:
        """The replicas' states into one, in replica order; every replica and the served
        model continue from it. The first replica that trained is the starting point, so
        that one replica merges into itself bit for bit. Returns the seconds of the merge
        and of one replica's load of its result."""
        t0 = time.perf_counter()
        base_arrays, base_meta = self._base
        states = [t.model.state_dict() for t in self._replicas]
        total = sum(counts)
        active = [k for k in range(self.replicas) if counts[k]]
        first = active[0]
        merged: dict[str, np.ndarray] = {}
        for key in states[first][0]:
            # An optimizer allocates its buffers on its first step: zeros before.
            base = base_arrays.get(key, np.zeros(np.shape(states[first][0][key])))
            # Only replicas that trained this round: the others hold the last merge.
            values = {k: np.asarray(states[k][0][key], dtype=np.float64) for k in active}
            if key.endswith("stats"):  # features.stats, target.stats: [count, mean, m2] rows
                rows = base.reshape(3, -1)
                acc = values[first].reshape(3, -1)
                for k in active[1:]:
                    acc = _pool(acc, _unpool(values[k].reshape(3, -1), rows))
                merged[key] = acc.ravel()
            elif self.merge == "mean" and key.startswith("model."):
                acc = values[first] * (counts[first] / total)
                for k in active[1:]:
                    acc = acc + values[k] * (counts[k] / total)
                merged[key] = acc
            else:  # "sum", and the missing-value counts: every replica's change added
                acc = values[first].copy()
                for k in active[1:]:
                    acc += values[k] - base
                merged[key] = acc
        meta = states[first][1]
        steps = _optimizer_state(base_meta)["n_iterations"]
        step_counts = [_optimizer_state(states[k][1])["n_iterations"] - steps for k in active]
        learnt = [
            int(states[k][1]["samples_learnt"]) - int(base_meta["samples_learnt"]) for k in active
        ]
        meta = {
            **meta,
            "samples_learnt": int(base_meta["samples_learnt"]) + sum(learnt),
            "model": {
                **meta["model"],
                "optimizer_state": {
                    **_optimizer_state(meta),
                    "n_iterations": steps + sum(step_counts),
                },
            },
        }
        merge = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._served.load_state_dict(merged, meta)  # copies the arrays
        learner = self._served.model
        if isinstance(learner.optimizer, optim.FTRL):
            # FTRL's weights are a function of its merged (z, n): a step with a zero
            # gradient changes neither and sets the weights from them (its own formula).
            weights = learner.weights_vector()
            learner.optimizer.step(weights, np.zeros_like(weights), _l1_vector(learner))
            learner.optimizer.n_iterations -= 1
            learner.set_weights_vector(weights, finite=False)
            merged["model.w"] = weights
        load = time.perf_counter() - t0
        for trainer in self._replicas:
            trainer.model.load_state_dict(merged, meta)
        self._base = ({k: v.copy() for k, v in merged.items()}, meta)
        size = sum(v.size for v in merged.values())
        # Each replica's state up to the merge, the merged state back down.
        self._messages += 2 * self.replicas
        self._bytes += 2 * self.replicas * size * _FLOAT_BYTES
        return merge, load

    def _placed_worker_losses(self) -> np.ndarray:
        out = np.full(self._position, np.nan)
        for positions, losses in self._worker_losses:
            out[positions] = losses
        return out

    def finish(self) -> Run:
        """The last, partial round trained and merged; what the run did."""
        if self._in_round:
            self._end_round()
        return Run(
            losses=np.concatenate(self._losses) if self._losses else np.empty(0),
            errors=np.concatenate(self._errors) if self._classifier and self._errors else None,
            seconds=self._seconds,
            work_seconds=self._work,
            messages=self._messages,
            message_bytes=self._bytes,
            model=self._served,
            max_share=int(self._shares.max()),
            worker_losses=self._placed_worker_losses(),
        )


# ---------------------------------------------------------------------------- shards


def shard_ranges(n_features: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous column ranges of ``shards`` near-equal widths.

    >>> shard_ranges(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if not 1 <= shards <= n_features:
        raise ValueError(f"shards must be in [1, n_features={n_features}], got {shards}")
    edges = [(j * n_features + shards - 1) // shards for j in range(shards + 1)]
    return list(itertools.pairwise(edges))


class _Shard:
    """One column range: its statistics, coefficients and optimizer."""

    def __init__(self, whole: Pipeline, lo: int, hi: int, n_outputs: int) -> None:
        features = whole.features
        self.lo, self.hi = lo, hi
        self.features = FeatureTransform(
            hi - lo,
            scale=features.scale,
            defaults={c - lo: v for c, v in features.defaults.items() if lo <= c < hi},
            clip=features.clip,
            names=features.names[lo:hi],
        )
        learner = whole.model
        self.coef = np.zeros((hi - lo) * n_outputs)
        self.shape = (hi - lo,) if n_outputs == 1 else (hi - lo, n_outputs)
        self.optimizer = optim.optimizer_from_params(optim.optimizer_params(learner.optimizer))
        self.l1 = np.full(self.coef.size, learner.l1) if learner.l1 else 0.0
        self.seconds = 0.0

    def partial(self, Z: np.ndarray) -> np.ndarray:
        z: np.ndarray = Z @ self.coef.reshape(self.shape)
        return z


class Sharded:
    """One linear classifier's columns split over ``shards`` workers, trained batch by
    batch with a synchronous round trip to a coordinator (see the module docstring); the
    batches are cut as the job cuts them. Spec limits: a logistic or softmax model without
    holdout or replay."""

    def __init__(self, spec: Mapping[str, Any], shards: int) -> None:
        self.spec = _spec(spec)
        if self.spec.get("type") not in ("logistic", "softmax"):
            raise ValueError("the sharded simulation trains logistic and softmax models")
        for key in ("holdout_size", "replay_size"):
            if int(self.spec.get(key, 0)):
                raise ValueError(f"the sharded simulation has no {key}")
        whole = build_model(self.spec)
        self._template = whole
        learner = whole.model
        if not isinstance(learner, LogisticRegression | SoftmaxRegression):
            raise ValueError("the sharded simulation trains logistic and softmax models")
        self._learner = learner
        self._k = 1 if isinstance(learner, LogisticRegression) else learner.n_classes
        self.batch_size = int(self.spec["batch_size"])
        self._shards = [
            _Shard(whole, lo, hi, self._k) for lo, hi in shard_ranges(whole.n_features, shards)
        ]
        self.bias = np.zeros(self._k)
        self._bias_optimizer = optim.optimizer_from_params(
            optim.optimizer_params(learner.optimizer)
        )
        self.samples_learnt = 0
        self._pending_X: list[np.ndarray] = []
        self._pending_y: list[np.ndarray] = []
        self._losses: list[np.ndarray] = []
        self._errors: list[np.ndarray] = []
        self._seconds = self._work = 0.0
        self._messages = self._bytes = 0
        self.rejected = 0

    @property
    def shards(self) -> int:
        return len(self._shards)

    # -- scores

    def partial_scores(self, X: np.ndarray) -> list[np.ndarray]:
        """Each shard's share of the raw scores (its transformed columns times its
        coefficients), in shard order; the coordinator adds them and the intercept."""
        X = np.asarray(X, dtype=np.float64)
        return [s.partial(s.features.transform_many(X[:, s.lo : s.hi])) for s in self._shards]

    def scores(self, X: np.ndarray) -> np.ndarray:
        """The raw scores (logits) as the coordinator sums them."""
        return self._sum(self.partial_scores(X))

    def _sum(self, parts: list[np.ndarray]) -> np.ndarray:
        z = parts[0].copy()
        for p in parts[1:]:
            z += p
        z += self.bias if self._k > 1 else self.bias[0]
        return z

    def _loss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        # LogisticRegression.loss_many and SoftmaxRegression.loss_many, from the scores.
        if self._k == 1:
            out: np.ndarray = np.logaddexp(0.0, z) - y * z
            return out
        labels = y.astype(np.int64)
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        out = lse - z[np.arange(len(labels)), labels]
        return out

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return (z > 0.0).astype(np.int64) if self._k == 1 else z.argmax(axis=1)

    # -- training

    def feed(self, X: np.ndarray, y: np.ndarray) -> None:
        """The next samples; full batches (the job's cut) are trained as they fill."""
        self._pending_X.append(np.asarray(X, dtype=np.float64))
        self._pending_y.append(np.asarray(y, dtype=np.float64))
        self._drain(final=False)

    def _drain(self, final: bool) -> None:
        X = np.concatenate(self._pending_X) if self._pending_X else np.empty((0, 0))
        y = np.concatenate(self._pending_y) if self._pending_y else np.empty(0)
        start = 0
        while start < len(y):
            size = ramp_size(self.samples_learnt, self.batch_size)
            if len(y) - start < size and not final:
                break
            end = min(len(y), start + size)
            self._train_batch(X[start:end], y[start:end])
            start = end
        self._pending_X, self._pending_y = [X[start:]], [y[start:]]

    def _train_batch(self, X: np.ndarray, y: np.ndarray) -> None:
        """The trainer's test-then-train step (ModelTrainer.train_batch, Pipeline.observe
        and fit, the linear model's learn_many), over the shards."""
        learner, n = self._learner, len(y)
        fwd, test_parts, fit_parts, Zs = [], [], [], []
        for s in self._shards:
            t0 = time.perf_counter()
            Xs = X[:, s.lo : s.hi]
            test_parts.append(s.partial(s.features.transform_many(Xs)))
            s.features.learn_many(Xs)
            Z = s.features.transform_many(Xs)
            Zs.append(Z)
            fit_parts.append(s.partial(Z))
            fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        z_test = self._sum(test_parts)
        self._losses.append(self._loss(z_test, y))
        self._errors.append((self._predict(z_test) != y).astype(np.float64))
        self.samples_learnt += n
        labels = y.astype(np.int64) if self._k > 1 else y
        r = learner._residual(self._sum(fit_parts), labels)
        r /= max(n, learner.batch_size)
        g_bias = r.sum(axis=0) if self._k > 1 else np.array([r.sum()])
        coordinator = time.perf_counter() - t0
        grads, bwd = [], []
        for s, Z in zip(self._shards, Zs, strict=True):
            t0 = time.perf_counter()
            g = (Z.T @ r).ravel()
            if learner.l2:
                g += learner.l2 * s.coef
            grads.append(g)
            bwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        norm = math.sqrt(sum(float(g @ g) for g in grads) + float(g_bias @ g_bias))
        coordinator += time.perf_counter() - t0
        round_trips = 1
        if not math.isfinite(norm):
            self.rejected += 1  # the model's gate: a non-finite gradient is not applied
        else:
            scale = 1.0
            if learner.clip_grad_norm is not None and norm > learner.clip_grad_norm:
                scale = learner.clip_grad_norm / norm
            if learner.clip_grad_norm is not None:
                round_trips = 2  # each shard's squared norm up, the scale down
            before = [s.coef.copy() for s in self._shards], self.bias.copy()
            for i, (s, g) in enumerate(zip(self._shards, grads, strict=True)):
                t0 = time.perf_counter()
                if scale != 1.0:
                    g *= scale
                s.optimizer.step(s.coef, g, s.l1)
                bwd[i] += time.perf_counter() - t0
            if scale != 1.0:
                g_bias *= scale
            self._bias_optimizer.step(self.bias, g_bias)
            if not all(np.all(np.isfinite(s.coef)) for s in self._shards) or not np.all(
                np.isfinite(self.bias)
            ):
                # The trainer's safety gate: the weights go back everywhere, the optimizers
                # keep the step, as ModelTrainer._undo without a holdout (the decision
                # rides on the next batch's message, no extra round trip).
                self.rejected += 1
                for s, w in zip(self._shards, before[0], strict=True):
                    s.coef[:] = w
                self.bias[:] = before[1]
        for s, a, b in zip(self._shards, fwd, bwd, strict=True):
            s.seconds += a + b
        self._seconds += max(fwd) + coordinator + max(bwd)
        self._work += sum(fwd) + coordinator + sum(bwd)
        # Per shard: its columns of the batch down, its two partial scores up, the residual
        # down; with clipping its squared norm up and the scale down.
        self._messages += self.shards * (1 + 2 * round_trips)
        self._bytes += _FLOAT_BYTES * (
            X.size + self.shards * (3 * n * self._k + 2 * (round_trips - 1))
        )

    def finish(self) -> Run:
        """The last, partial batch trained; what the run did."""
        self._drain(final=True)
        return Run(
            losses=np.concatenate(self._losses) if self._losses else np.empty(0),
            errors=np.concatenate(self._errors) if self._errors else None,
            seconds=self._seconds,
            work_seconds=self._work,
            messages=self._messages,
            message_bytes=self._bytes,
            model=self.pipeline(),
            max_share=self.samples_learnt,  # every shard sees every sample (its columns)
        )

    def weights_vector(self) -> np.ndarray:
        """The unsharded model's published vector assembled from the shards: coefficients
        (shard ranges in order are row ranges of the C-order coefficient matrix), the
        intercept, then the statistics ``[count, mean, m2]``, each over every column."""
        coef = [s.coef for s in self._shards]
        stats = [s.features.vector().reshape(3, -1) for s in self._shards]
        return np.concatenate([*coef, self.bias, np.concatenate(stats, axis=1).ravel()])

    def pipeline(self) -> Pipeline:
        """The unsharded model with the assembled weights: what a predictor would serve."""
        model = build_model(self.spec)
        model.set_weights_vector(self.weights_vector())
        model.samples_learnt = self.samples_learnt
        return model
