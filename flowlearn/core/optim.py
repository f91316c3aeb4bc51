"""Optimizers that update a flat float64 parameter vector in place, vectorised.

Every optimizer takes ``step(w, g, l1=0.0)``: ``w`` the parameters (updated in place),
``g`` the gradient of the batch loss, ``l1`` an optional per-coordinate L1 strength applied
as a proximal step (soft-thresholding scaled by the optimizer's own per-coordinate step size),
which keeps weights exactly sparse instead of oscillating around zero.

Learning rates are floats or schedules (:class:`Constant`, :class:`InverseScaling`,
:class:`ExponentialDecay`) evaluated at the optimizer's step count.

>>> import numpy as np
>>> w = np.zeros(2)
>>> SGD(lr=0.5).step(w, np.array([1.0, -2.0]))
>>> w.tolist()
[-0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from flowlearn.core.validation import Arrays, Meta, Stateful, check_array

# ---------------------------------------------------------------------------- schedules


class Scheduler(Stateful):
    """A learning rate as a function of the step count ``t`` (0 for the first step)."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError


class Constant(Scheduler):
    """``lr`` at every step."""

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def __call__(self, t: int) -> float:
        return self.lr

    def _params(self) -> dict[str, Any]:
        return {"lr": self.lr}


class InverseScaling(Scheduler):
    """``lr / (t + 1) ** power``: the classic decaying SGD schedule."""

    def __init__(self, lr: float, power: float = 0.5) -> None:
        self.lr = float(lr)
        self.power = float(power)

    def __call__(self, t: int) -> float:
        return self.lr / (t + 1) ** self.power

    def _params(self) -> dict[str, Any]:
        return {"lr": self.lr, "power": self.power}


class ExponentialDecay(Scheduler):
    """``lr * decay ** t``."""

    def __init__(self, lr: float, decay: float = 0.999) -> None:
        self.lr = float(lr)
        self.decay = float(decay)

    def __call__(self, t: int) -> float:
        return self.lr * self.decay**t

    def _params(self) -> dict[str, Any]:
        return {"lr": self.lr, "decay": self.decay}


SCHEDULERS: dict[str, type[Scheduler]] = {
    c.__name__: c for c in (Constant, InverseScaling, ExponentialDecay)
}


def _schedule(lr: float | Scheduler | Mapping[str, Any]) -> Scheduler:
    """A float, a scheduler, or a scheduler's ``{"class", "params"}`` form -> a scheduler."""
    if isinstance(lr, Scheduler):
        return lr
    if isinstance(lr, Mapping):
        cls = SCHEDULERS.get(lr.get("class", ""))
        if cls is None:
            raise ValueError(f"unknown learning-rate schedule {lr.get('class')!r}")
        return cls._from_params(lr["params"])
    value = float(lr)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr!r}")
    return Constant(value)


# ---------------------------------------------------------------------------- optimizers


def _soft_threshold(w: np.ndarray, threshold: np.ndarray | float) -> None:
    """Proximal step of the L1 norm, in place: shrink towards 0 by ``threshold``, clip at 0."""
    np.copyto(w, np.copysign(np.maximum(np.abs(w) - threshold, 0.0), w))


class Optimizer(Stateful):
    """Base: a learning-rate schedule, a step counter and per-coordinate buffers.

    Buffers are allocated on the first step, so one optimizer can serve any parameter size;
    after that the size is fixed (a mismatch is a ValueError, not a silent reset).
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, lr: float | Scheduler | Mapping[str, Any]) -> None:
        self.schedule = _schedule(lr)
        self.n_iterations = 0
        self._size: int | None = None
        self._buf: dict[str, np.ndarray] = {}

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step will use."""
        return self.schedule(self.n_iterations)

    def set_learning_rate(self, lr: float | Scheduler) -> None:
        """Replace the schedule, keeping the step count and buffers (an operator command)."""
        self.schedule = _schedule(lr)

    def _prepare(self, w: np.ndarray, g: np.ndarray) -> None:
        if w.shape != g.shape or w.ndim != 1:
            raise ValueError(f"w and g must be 1-d of one shape, got {w.shape} and {g.shape}")
        if self._size is None:
            self._size = w.size
            self._buf = {name: np.zeros(w.size) for name in self._buffers}
        elif self._size != w.size:
            raise ValueError(f"this optimizer updates {self._size} parameters, got {w.size}")

    def step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float = 0.0) -> None:
        """Update ``w`` in place from gradient ``g`` (same 1-d shape)."""
        self._prepare(w, g)
        self._step(w, g, l1, self.schedule(self.n_iterations))
        self.n_iterations += 1

    def _step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float, lr: float) -> None:
        raise NotImplementedError

    def adopt(self, w: np.ndarray, l1: np.ndarray | float = 0.0) -> None:
        """The weights were set from outside (a rollback): make the state agree, so the
        next step starts from ``w``. Only an optimizer whose state determines the weights
        (FTRL) has anything to do."""

    def _lr_params(self) -> dict[str, Any]:
        s = self.schedule
        lr = s.lr if type(s) is Constant else {"class": type(s).__name__, "params": s._params()}
        return {"lr": lr}

    def _state(self) -> tuple[Arrays, Meta]:
        return dict(self._buf), {"n_iterations": self.n_iterations, "size": self._size}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.n_iterations = int(meta["n_iterations"])
        size = meta["size"]
        self._size = None if size is None else int(size)
        if self._size is not None:
            self._buf = {name: check_array(arrays, name, (self._size,)) for name in self._buffers}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    >>> import numpy as np
    >>> opt, w = SGD(lr=0.1, momentum=0.9), np.zeros(1)
    >>> for _ in range(2):
    ...     opt.step(w, np.array([1.0]))
    >>> round(float(w[0]), 6)  # -0.1, then -0.1 * (1 + 0.9)
    -0.29
    """

    def __init__(
        self,
        lr: float | Scheduler | Mapping[str, Any] = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        # Plain SGD keeps no buffer at all: no memory, no state to checkpoint.
        self._buffers = ("velocity",) if self.momentum else ()

    def _step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float, lr: float) -> None:
        if self.momentum:
            v = self._buf["velocity"]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        w -= lr * g
        if np.any(l1):
            _soft_threshold(w, lr * l1)

    def _params(self) -> dict[str, Any]:
        return {**self._lr_params(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdaGrad(Optimizer):
    """AdaGrad: per-coordinate steps ``lr / sqrt(sum of squared gradients)``."""

    _buffers = ("g2",)

    def __init__(self, lr: float | Scheduler | Mapping[str, Any] = 0.1, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = float(eps)

    def _step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float, lr: float) -> None:
        g2 = self._buf["g2"]
        g2 += g * g
        rate = lr / (np.sqrt(g2) + self.eps)
        w -= rate * g
        if np.any(l1):
            _soft_threshold(w, rate * l1)

    def _params(self) -> dict[str, Any]:
        return {**self._lr_params(), "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias-corrected first and second moments."""

    _buffers = ("m", "v")

    def __init__(
        self,
        lr: float | Scheduler | Mapping[str, Any] = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(lr)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)

    def _step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float, lr: float) -> None:
        t = self.n_iterations + 1
        m, v = self._buf["m"], self._buf["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        # Fold both bias corrections into the scalar step, one vector op fewer.
        step = lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        rate = step / (np.sqrt(v) + self.eps)
        w -= rate * m
        if np.any(l1):
            _soft_threshold(w, rate * l1)

    def _params(self) -> dict[str, Any]:
        return {**self._lr_params(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan et al., 2013, "Ad Click Prediction: a View from the Trenches").

    Keeps per-coordinate ``z`` and ``n`` and sets the weights in closed form::

        w_i = 0                                                  if |z_i| <= l1
        w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

    so L1 gives exact zeros. ``l1``/``l2`` here apply to every coordinate; a model's own L1
    (passed to :meth:`step`) adds to ``l1`` per coordinate. The weights are a function of
    ``(z, n)``: weights set from outside (a rollback) are followed by :meth:`adopt`, which
    solves the formula for ``z`` (``n``, the step sizes, stays), or the next step would undo
    them.
    """

    _buffers = ("z", "n")

    def __init__(self, alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 1.0):
        super().__init__(alpha)
        if alpha <= 0 or beta < 0 or l1 < 0 or l2 < 0:
            raise ValueError("FTRL needs alpha > 0 and beta, l1, l2 >= 0")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.l1 = float(l1)
        self.l2 = float(l2)

    def _step(self, w: np.ndarray, g: np.ndarray, l1: np.ndarray | float, lr: float) -> None:
        z, n = self._buf["z"], self._buf["n"]
        g2 = g * g
        sqrt_n = np.sqrt(n)
        n += g2
        new_sqrt_n = np.sqrt(n)
        z += g - (new_sqrt_n - sqrt_n) / self.alpha * w
        shrunk = np.maximum(np.abs(z) - (self.l1 + l1), 0.0)
        np.copyto(w, -np.copysign(shrunk, z) / ((self.beta + new_sqrt_n) / self.alpha + self.l2))

    def adopt(self, w: np.ndarray, l1: np.ndarray | float = 0.0) -> None:
        """``z`` such that the closed form gives back ``w`` (0 where ``w`` is 0)."""
        if self._size is None:
            return  # no step yet: the first one starts from whatever w is
        if w.size != self._size:
            raise ValueError(f"this optimizer updates {self._size} parameters, got {w.size}")
        scale = (self.beta + np.sqrt(self._buf["n"])) / self.alpha + self.l2
        self._buf["z"] = np.where(w != 0.0, -w * scale - np.sign(w) * (self.l1 + l1), 0.0)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "l1": self.l1, "l2": self.l2}

    def set_learning_rate(self, lr: float | Scheduler) -> None:
        """FTRL's learning rate is ``alpha``: set it (a schedule is not supported)."""
        if isinstance(lr, Scheduler):
            raise ValueError("FTRL takes a constant alpha, not a schedule")
        self.alpha = float(lr)
        self.schedule = _schedule(self.alpha)


OPTIMIZERS: dict[str, type[Optimizer]] = {c.__name__: c for c in (SGD, AdaGrad, Adam, FTRL)}


#: The optimizers a model spec names (``optimizer = "adam"``), made from its learning rate.
SPEC_OPTIMIZERS: dict[str, Callable[[float], Optimizer]] = {
    "sgd": lambda lr: SGD(lr=lr),
    "adagrad": lambda lr: AdaGrad(lr=lr),
    "adam": lambda lr: Adam(lr=lr),
    # The spec's l1/l2 act in the model for every optimizer (per coefficient, intercept
    # unpenalised); FTRL's own penalties would add a second, global one, so they are off.
    "ftrl": lambda lr: FTRL(alpha=lr, l1=0.0, l2=0.0),
}


def optimizer_from_params(spec: Mapping[str, Any]) -> Optimizer:
    """An optimizer from its ``{"class", "params"}`` form (a fixed whitelist of classes)."""
    cls = OPTIMIZERS.get(spec.get("class", ""))
    if cls is None:
        raise ValueError(f"unknown optimizer {spec.get('class')!r}; known: {sorted(OPTIMIZERS)}")
    return cls._from_params(spec["params"])


def optimizer_params(opt: Optimizer) -> dict[str, Any]:
    """The ``{"class", "params"}`` form of an optimizer (what a model's state records)."""
    return {"class": type(opt).__name__, "params": opt._params()}
