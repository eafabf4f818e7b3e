"""Guidance (E39-E42): steering a diffusion model toward a label, as wrappers that turn a conditional model, or
an unconditional model and a classifier, into a plain model function model(x, t) -> array for any sampler.

Bayes for scores [E39]. p(x_t | y) = p(x_t) p(y | x_t) / p(y), and p(y) does not depend on x_t, so

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t).

Tilting by a scale w, p_w(x_t | y) ∝ p(x_t) p(y | x_t)^w, adds w grad log p(y | x_t) to the score. A noise
prediction is a scaled score, eps = -sqrt(1 - alpha_bar_t) grad log p(x_t) (E27), hence the factor below.

Classifier guidance [E40] (Dhariwal & Nichol 2021): with a classifier p_phi(y | x_t, t) trained on noisy x_t,

    eps_guided = eps(x_t, t) - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t).

Classifier-free guidance [E41] (Ho & Salimans 2021): Bayes again, p(y | x_t) ∝ p(x_t | y) / p(x_t), so the
conditional and unconditional predictions of one network (trained with the label dropped to a null label
for a fraction of examples) make an implicit classifier, grad log p(y | x_t) = -(eps_cond - eps_uncond) /
sqrt(1 - alpha_bar_t), and the tilted score is

    eps_guided = eps_uncond + w (eps_cond - eps_uncond)      (w = 0: unconditional, w = 1: conditional).

Negative conditioning [E42]: the prediction for a negative label takes the place of the unconditional one,
eps_guided = eps_negative + w (eps_positive - eps_negative): the tilt p(x_t | neg) (p(pos | x_t) / p(neg | x_t))^w.

Both combinations are affine with weights summing to 1, and x0 = (x_t - sqrt(1 - alpha_bar) eps) /
sqrt(alpha_bar) and v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 are affine in eps for fixed x_t (E13, E14),
so CFG applies unchanged to eps, x0 and v predictions. Classifier guidance moves the score, so it is applied
to the eps the output implies and converted back.

Sigma-based samplers (Euler, Heun, Euler ancestral). They carry x = x_t / a, a = sqrt(alpha_bar_t), at the noise
level sigma = sqrt(1 - a^2) / a, give the model scale_model_input(x) = a x = x_t and read its output as eps (or
x0, v) of x_t, with D(x; sigma) = x - sigma eps. Their score in x is grad_x log p(x) = -eps / sigma, and
grad_x log p(y | x) = a grad_{x_t} log p(y | x_t) (chain rule through x_t = a x). Guiding in their variables,

    eps_guided = -sigma (grad_x log p(x) + s grad_x log p(y | x)) = eps - s sigma a grad_{x_t} log p(y | x_t),

and sigma a = sqrt(1 - a^2) = sqrt(1 - alpha_bar_t): the same formula, evaluated at the x_t and t the model is
given. Their t may be fractional; a and sigma then come from sigma(t) interpolated as the samplers do
(`minidiff.samplers.sigmas.sigma_at`): a = 1 / sqrt(1 + sigma^2), sqrt(1 - alpha_bar) = sigma a.

    conditional(network, null_label=None)                      a minidiff Module as model(x, t, labels) on arrays
    classifier_free(model, labels, scale, negative=None, rescale=0.0, null_label=None) -> model(x, t)   [E41][E42]
    classifier_guided(model, classifier, labels, schedule, scale=1.0, prediction_type="epsilon") -> model(x, t)
    log_prob_gradient(classifier, x, t, labels), class_probabilities(classifier, x, t)
    train_noisy_classifier(x0, labels, schedule, steps, rng, ...) -> (NoisyClassifier, losses)

Labels follow minidiff's UNet: the null label is the last index, null_label = num_class_embeds - 1, and the
real labels are 0..null_label - 1; a label is an int or an integer array whose first axis is the batch ((B,)
class labels, or (B, L) context tokens, which may also hold the null token: an unspecified position).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

from minidiff import functional as F
from minidiff.autodiff.tensor import Tensor, enable_grad, no_grad
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.forward import q_sample
from minidiff.diffusion.parameterization import PREDICTION_TYPES, output_reading
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.nn.classifier import NoisyClassifier
from minidiff.nn.module import Module
from minidiff.optim import AdamW, CosineDecay, LRScheduler
from minidiff.samplers.sigmas import sigma_at, sigma_table

__all__ = [
    "class_probabilities",
    "classifier_free",
    "classifier_guided",
    "classifier_guided_eps",
    "conditional",
    "guided_combination",
    "log_prob_gradient",
    "rescale_guidance",
    "train_noisy_classifier",
]

Model = Callable[[np.ndarray, Any], np.ndarray]
ConditionalModel = Callable[[np.ndarray, Any, np.ndarray], np.ndarray]


# --- argument checks -------------------------------------------------------------------------------------


def _scale(value: Any, name: str) -> float:
    """A finite number >= 0. A negative scale would tilt by p(y | x)^s with s < 0, which grows without bound
    where the label is unlikely and need not be normalizable; steer away from a label with `negative` (E42)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number >= 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0 (to steer away from a label use negative=...), "
                         f"got {value!r}")
    return float(value)


def _label_array(labels: Any, name: str, high: int | None, note: str = "") -> np.ndarray:
    """labels as an int64 array (0-d: one label for the batch), every value in [0, high) when high is known."""
    arr = np.asarray(labels)
    if isinstance(labels, (bool, np.bool_)) or arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an int or an integer array of labels, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or (high is not None and arr.max() >= high)):
        bad = arr[(arr < 0) | (arr >= (high if high is not None else np.inf))].ravel()[0]
        expected = f"labels in [0, {high}){note}" if high is not None else "labels >= 0"
        raise ValueError(f"{name}: expected {expected}, got {bad}")
    return arr


def _guidance_labels(labels: Any, name: str, null_label: int) -> np.ndarray:
    """Class labels (an int or (B,)) in [0, null_label); token sequences ((B, L, ...)) may also hold the null
    token, an unspecified position of the context."""
    if np.ndim(labels) >= 2:
        return _label_array(labels, name, null_label + 1, f" (the tokens, {null_label} the null token)")
    return _label_array(labels, name, null_label, f" (the classes; {null_label} is the null label)")


def _per_example(labels: np.ndarray, name: str, batch: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One label (or label sequence) per example: a 0-d label filled to `shape` (default (batch,)), an array
    checked to have `batch` rows (and `shape`, when given)."""
    if labels.ndim == 0:
        return np.full(shape or (batch,), labels, dtype=np.int64)
    if labels.shape[0] != batch or (shape is not None and labels.shape != shape):
        want = shape if shape is not None else f"({batch}, ...)"
        raise ValueError(f"{name}: expected one label per example of x, shape {want}, got {labels.shape}")
    return labels


def _batch_t(t: Any, batch: int) -> np.ndarray:
    """t as a (batch,) array (a number is broadcast)."""
    t = np.asarray(t)
    if t.dtype.kind not in "iuf" or t.dtype == np.bool_:
        raise TypeError(f"t: expected int or float timesteps, got dtype {t.dtype}")
    if t.ndim == 0:
        return np.full(batch, t)
    if t.shape != (batch,):
        raise ValueError(f"t: expected a number or one timestep per example, shape ({batch},), got {t.shape}")
    return t


def _output(out: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    out = np.asarray(out)
    if out.shape != shape or out.dtype.kind != "f":
        raise ValueError(f"model: expected {what} of shape {shape} (float), got {out.dtype} {out.shape}")
    return out


def _per_example_shape(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """(B,) values as (B, 1, ..., 1), broadcasting against `like` (B, ...), in like's dtype."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1)).astype(like.dtype)


# --- a minidiff network as a conditional model on arrays ------------------------------------------------


@contextlib.contextmanager
def _evaluating(module: Module) -> Iterator[None]:
    """Eval mode (no dropout) while the block runs, then the module's previous mode again."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)



class _ConditionalNetwork:
    """model(x, t, labels) -> array, from network(Tensor(x), t, labels) in eval mode, without a graph."""

    def __init__(self, network: Module, null_label: int) -> None:
        self.network, self.null_label = network, null_label
        self.dtype = next(iter(network.parameters())).dtype

    def __repr__(self) -> str:
        return f"conditional({type(self.network).__name__}, null_label={self.null_label})"

    def __call__(self, x: np.ndarray, t: Any, labels: np.ndarray) -> np.ndarray:
        x = _v.float_array(x, "x")
        with _evaluating(self.network), no_grad():
            out = self.network(Tensor(x.astype(self.dtype, copy=False)), t, labels)
        return out.data.astype(x.dtype, copy=False)


def conditional(network: Module, null_label: int | None = None) -> ConditionalModel:
    """A minidiff network called as network(Tensor(x), t, labels) (the UNet with num_class_embeds, MLPDenoiser
    with num_classes, or any Module of that signature) as a conditional model(x, t, labels) on NumPy arrays:
    eval mode during the call (the network's mode is restored after), no graph, the output in x's dtype. Its
    `null_label` is the given one, else the network's `null_class_label` (the UNet's num_class_embeds - 1; a
    UNet without classes raises a ValueError naming num_class_embeds)."""
    if not isinstance(network, Module):
        raise TypeError(f"network: expected a minidiff Module called as network(x, t, labels), "
                        f"got {type(network).__name__}")
    if null_label is None:
        if not hasattr(type(network), "null_class_label"):
            raise TypeError(f"network: {type(network).__name__} has no null_class_label; pass null_label=<the "
                            "index of the label it was trained to read as 'no label'>")
        null_label = network.null_class_label  # the UNet raises for num_class_embeds None
    return _ConditionalNetwork(network, _null_label(null_label))


def _null_label(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"null_label: expected an int >= 1 (the last label index; the classes are below it), "
                         f"got {value!r}")
    return int(value)


# --- classifier-free guidance [E41][E42] -----------------------------------------------------------------


@exercise("ex08.1")
def guided_combination(output: np.ndarray, scale: float) -> np.ndarray:
    """[E41] eps_uncond + w (eps_cond - eps_uncond) from one batched model output.

    output: (2B, ...), the model's prediction for the unconditional (or negative, E42) half first and the
    conditional half second, as in diffusers' pipelines (`torch.cat([negative, positive])`). scale: w.
    Returns (B, ...) in the dtype of output, computed as (1 - w) eps_uncond + w eps_cond, which equals the
    formula and gives eps_uncond exactly at w = 0 and eps_cond exactly at w = 1.
    """
    if output.shape[0] % 2:
        raise ValueError(f"output: expected an even batch (unconditional half, conditional half), got {output.shape}")
    # BEGIN SOLUTION ex08.1: split the batch into its two halves (which comes first?), then the weighted sum
    batch = output.shape[0] // 2
    uncond, cond = output[:batch], output[batch:]  # (B, ...) each
    guided = (1.0 - scale) * uncond + scale * cond
    # END SOLUTION
    return guided.astype(output.dtype, copy=False)


def rescale_guidance(guided: np.ndarray, cond: np.ndarray, phi: float) -> np.ndarray:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15
    and 16; diffusers' `rescale_noise_cfg`): per example, scale the guided prediction to the standard deviation
    of the conditional one, then mix, phi rescaled + (1 - phi) guided. Large w inflates the guided prediction's
    spread (over-exposed images); phi = 0 is plain guidance. guided, cond: (B, ...) of one shape."""
    axes = tuple(range(1, guided.ndim))
    std_guided = guided.std(axis=axes, keepdims=True)  # (B, 1, ..., 1)
    ratio = np.divide(cond.std(axis=axes, keepdims=True), std_guided, out=np.ones_like(std_guided),
                      where=std_guided > 0)
    return (phi * (guided * ratio) + (1.0 - phi) * guided).astype(guided.dtype, copy=False)


class _ClassifierFree:
    """model(x, t) = the guided prediction of a conditional model (see `classifier_free`)."""

    def __init__(self, model: ConditionalModel, labels: np.ndarray, scale: float, negative: np.ndarray | None,
                 rescale: float, null_label: int) -> None:
        self.model, self.labels, self.scale = model, labels, scale
        self.negative, self.rescale, self.null_label = negative, rescale, null_label

    def __repr__(self) -> str:
        negative = "" if self.negative is None else f", negative={self.negative.tolist()}"
        return (f"classifier_free({self.model!r}, labels={self.labels.tolist()}, scale={self.scale:g}{negative}, "
                f"rescale={self.rescale:g})")

    def __call__(self, x: np.ndarray, t: Any) -> np.ndarray:
        x = _v.float_array(x, "x")
        batch = x.shape[0]
        positive = _per_example(self.labels, "labels", batch)  # (B,) or (B, L)
        if self.negative is None:
            other = np.full_like(positive, self.null_label)
        else:
            other = _per_example(self.negative, "negative", batch, positive.shape)
        t = _batch_t(t, batch)
        out = self.model(np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([other, positive]))
        out = _output(out, (2 * batch, *x.shape[1:]), "an output for the doubled batch")  # (2B, ...)
        guided = guided_combination(out, self.scale)  # exercise 8.1
        if self.rescale > 0.0:
            guided = rescale_guidance(guided, out[batch:], self.rescale)
        return guided.astype(x.dtype, copy=False)


def classifier_free(model: ConditionalModel, labels: Any, scale: float, *, negative: Any = None,
                    rescale: float = 0.0, null_label: int | None = None) -> Model:
    """[E41][E42] Classifier-free guidance: a model(x, t) for any sampler, from a conditional model.

    guided(x, t) = eps_other + w (eps(x, t, labels) - eps_other), eps_other = eps(x, t, null_label) (E41) or,
    with `negative`, eps(x, t, negative) (E42): ONE model call on the doubled batch [x; x], labels
    [other; labels]. w = 0 is the unconditional (or negative-label) model, w = 1 the conditional one, w > 1
    the tilt p(x_t) p(y | x_t)^w of E39 at every t. The combination is affine with weights summing to 1, so it
    holds for eps, x0 and v predictions alike.

    model: a conditional model(x, t, labels) -> array on NumPy arrays (`conditional(unet)` makes one from a
    minidiff network; any callable of that signature, e.g. an exact oracle, works). labels: an int (one label
    for every example) or an integer array whose first axis is the batch, (B,) class labels or (B, L) tokens;
    class labels in [0, null_label), tokens in [0, null_label] (the null token marks an unspecified position).
    scale: w >= 0 (a negative w is refused: p(y | x)^w would be unbounded; use `negative` to steer away).
    negative: labels (same form) whose prediction replaces the unconditional one.
    rescale: phi in [0, 1] of guidance rescaling (Lin et al. 2023; `rescale_guidance`), applied after the
    combination; phi = 0 is plain guidance. null_label: the label the model was trained to read as "no label"
    (default: model.null_label, which `conditional` sets).
    """
    if not callable(model):
        raise TypeError(f"model: expected a conditional model(x, t, labels), got {type(model).__name__}")
    if null_label is None:
        null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError("null_label: this model does not say which label means 'no label'; pass null_label "
                             "(the UNet's num_class_embeds - 1)")
    null_label = _null_label(null_label)
    labels = _guidance_labels(labels, "labels", null_label)
    negative = None if negative is None else _guidance_labels(negative, "negative", null_label)
    scale = _scale(scale, "scale")
    if isinstance(rescale, (bool, np.bool_)) or not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale: expected phi in [0, 1] (0: plain guidance, 1: fully rescaled), got {rescale!r}")
    return _ClassifierFree(model, labels, scale, negative, float(rescale), null_label)


# --- classifier guidance [E40] ----------------------------------------------------------------------------


@exercise("ex08.2")
def classifier_guided_eps(eps: np.ndarray, grad_log_prob: np.ndarray, sqrt_one_minus_alpha_bar: np.ndarray,
                          scale: float) -> np.ndarray:
    """[E40] eps_guided = eps - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t).

    eps, grad_log_prob: (B, ...) of one shape. sqrt_one_minus_alpha_bar: (B,), one value per example (its t).
    scale: s. Returns (B, ...) in the dtype of eps.
    """
    _v.same_shape(grad_log_prob, "grad_log_prob", eps, "eps")
    if np.shape(sqrt_one_minus_alpha_bar) != eps.shape[:1]:
        raise ValueError(f"sqrt_one_minus_alpha_bar: expected one value per example, shape {eps.shape[:1]}, got "
                         f"{np.shape(sqrt_one_minus_alpha_bar)}")
    # BEGIN SOLUTION ex08.2: broadcast the per-example sqrt(1 - alpha_bar_t) over each example's axes, then E40
    b = np.asarray(sqrt_one_minus_alpha_bar).reshape((-1,) + (1,) * (eps.ndim - 1)).astype(eps.dtype)  # (B, 1, ..)
    eps_guided = eps - scale * b * grad_log_prob
    # END SOLUTION
    return eps_guided.astype(eps.dtype, copy=False)


class _VPCoefficients:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at the t a sampler passes: integer t index the schedule; float t
    (the sigma samplers') interpolate sigma(t) as they do, a = 1 / sqrt(1 + sigma^2), sqrt(1 - alpha_bar) = sigma a."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a minidiff.diffusion.NoiseSchedule, got {type(schedule).__name__}")
        self.schedule, self.sigmas = schedule, sigma_table(schedule)

    def __call__(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if t.dtype.kind == "f":
            sigma = sigma_at(self.sigmas, t)  # (B,)
            a = 1.0 / np.sqrt(1.0 + sigma * sigma)
            return a, sigma * a
        t = self.schedule.check_t(t)
        return self.schedule.sqrt_alpha_bars[t], self.schedule.sqrt_one_minus_alpha_bars[t]


class _ClassifierGuided:
    """model(x, t) = the classifier-guided prediction (see `classifier_guided`)."""

    def __init__(self, model: Model, grad_log_p: Callable[..., np.ndarray], labels: np.ndarray,
                 coefficients: _VPCoefficients, scale: float, prediction_type: str) -> None:
        self.model, self.grad_log_p, self.labels = model, grad_log_p, labels
        self.coefficients, self.scale, self.prediction_type = coefficients, scale, prediction_type

    def __repr__(self) -> str:
        return (f"classifier_guided(labels={self.labels.tolist()}, scale={self.scale:g}, "
                f"prediction_type={self.prediction_type!r})")

    def __call__(self, x: np.ndarray, t: Any) -> np.ndarray:
        x = _v.float_array(x, "x")
        batch = x.shape[0]
        labels = _per_example(self.labels, "labels", batch)  # (B,)
        t = _batch_t(t, batch)
        output = _output(self.model(x, t), x.shape, "an output")
        grad = _output(self.grad_log_p(x, t, labels), x.shape, "a gradient (classifier)")
        a, b = self.coefficients(t)  # (B,), (B,)
        reading = output_reading(_per_example_shape(a, x), _per_example_shape(b, x), self.prediction_type)
        eps = reading.e_x * x + reading.e_out * output  # [E13][E14] the eps the output implies
        eps = classifier_guided_eps(eps, grad.astype(x.dtype, copy=False), b, self.scale)  # exercise 8.2
        return ((eps - reading.e_x * x) / reading.e_out).astype(x.dtype, copy=False)  # the output that eps means


def classifier_guided(model: Model, classifier: Any, labels: Any, schedule: NoiseSchedule, *, scale: float = 1.0,
                      prediction_type: str = "epsilon") -> Model:
    """[E39][E40] Classifier guidance: a model(x, t) for any sampler, from an unconditional model and a classifier.

    guided eps = eps(x_t, t) - s sqrt(1 - alpha_bar_t) grad_{x_t} log p(y | x_t, t): by Bayes for scores (E39),
    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), this is the score of p(x_t) p(y | x_t)^s; s = 1
    with the exact class posterior is the conditional model p(x_t | y). One model call and one classifier
    gradient per call. For x0 and v predictions the output is converted to eps,
    guided, and converted back (E13, E14). Works for eps samplers (DDPM, DDIM, DPM-Solver++) and sigma
    samplers (Euler, Heun) alike: both give the model x_t and t (see the module docstring for the sigma form).

    model: the unconditional model(x, t) -> prediction. classifier: a NoisyClassifier (or any minidiff Module
    classifier(x_t, t) -> logits; its gradient by `log_prob_gradient`), or any callable grad_log_p(x, t, labels)
    -> grad_x log p(y | x, t) of x's shape (e.g. an exact posterior). labels: an int or (B,) ints >= 0 (below the
    classifier's num_classes). schedule: the model's NoiseSchedule. scale: s >= 0. prediction_type: "epsilon",
    "sample" or "v_prediction", what model returns.
    """
    if not callable(model):
        raise TypeError(f"model: expected a model(x, t) -> array, got {type(model).__name__}")
    if isinstance(classifier, Module):
        high = getattr(classifier, "num_classes", None)
        grad_log_p = partial(log_prob_gradient, classifier)
    elif callable(classifier):
        high, grad_log_p = None, classifier
    else:
        raise TypeError(f"classifier: expected a minidiff classifier Module or a callable grad_log_p(x, t, labels), "
                        f"got {type(classifier).__name__}")
    labels = _label_array(labels, "labels", high, " (the classifier's classes)")
    if labels.ndim > 1:
        raise ValueError(f"labels: expected an int or (B,) class labels, got shape {labels.shape}")
    return _ClassifierGuided(model, grad_log_p, labels, _VPCoefficients(schedule), _scale(scale, "scale"),
                             _v.choice(prediction_type, "prediction_type", PREDICTION_TYPES))


# --- the noisy classifier: gradient, probabilities, training ---------------------------------------------


def _classifier_input(classifier: Any, x: Any) -> tuple[np.ndarray, np.dtype]:
    if not isinstance(classifier, Module):
        raise TypeError(f"classifier: expected a minidiff Module classifier(x_t, t) -> logits, "
                        f"got {type(classifier).__name__}")
    x = _v.float_array(x, "x")
    return x, next(iter(classifier.parameters())).dtype


def log_prob_gradient(classifier: Module, x: np.ndarray, t: Any, labels: Any) -> np.ndarray:
    """grad_x log p_phi(y | x, t) = grad_x log softmax(classifier(x, t))[y], per example, by backpropagation through
    the classifier (in eval mode, its mode restored after), shape and dtype of x (B, ...). labels: an int or (B,)
    ints. The examples do not interact (no batch statistics), so the gradient of the summed log-probabilities
    is each example's own. The classifier's parameter gradients are zeroed afterwards."""
    x, dtype = _classifier_input(classifier, x)
    batch = x.shape[0]
    labels = _per_example(_label_array(labels, "labels", getattr(classifier, "num_classes", None)), "labels", batch,
                          (batch,))
    x_in = Tensor(x.astype(dtype), requires_grad=True)
    with _evaluating(classifier), enable_grad():
        log_probs = F.log_softmax(classifier(x_in, t), axis=1)  # (B, K)
        log_probs[np.arange(len(labels)), labels].sum().backward()
    classifier.zero_grad()
    return x_in.grad.astype(x.dtype, copy=False)


def class_probabilities(classifier: Module, x: np.ndarray, t: Any) -> np.ndarray:
    """p_phi(k | x, t) = softmax(classifier(x, t)), shape (B, num_classes), float64 (in eval mode, no graph)."""
    x, dtype = _classifier_input(classifier, x)
    with _evaluating(classifier), no_grad():
        return F.softmax(classifier(Tensor(x.astype(dtype)), t), axis=1).data.astype(np.float64)


def train_noisy_classifier(x0: np.ndarray, labels: np.ndarray, schedule: NoiseSchedule, steps: int,
                           rng: np.random.Generator, *, classifier: Module | None = None, batch_size: int = 128,
                           lr: float = 2e-3, weight_decay: float = 0.0) -> tuple[Module, np.ndarray]:
    """Train p_phi(y | x_t, t) [E40] on noisy data: each step draws batch_size examples (with replacement), t
    uniform on 1..T and x_t = q_sample(x0, t) (E3), and takes an AdamW step on the cross-entropy of the
    labels, the learning rate decaying as a cosine over `steps`.

    x0: data (N, ...) (images (N, C, H, W) or vectors (N, D)); labels: (N,) ints >= 0. classifier: the model to
    train (called classifier(x_t, t) -> logits); None builds NoisyClassifier(x0.shape[1:], labels.max() + 1) from
    rng. Returns (the classifier in eval mode, the loss of every step (steps,)).
    """
    x0 = _v.float_array(x0, "x0")
    labels = _label_array(labels, "labels", None)
    if labels.shape != x0.shape[:1]:
        raise ValueError(f"labels: expected one label per example of x0, shape {x0.shape[:1]}, got {labels.shape}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected a minidiff.diffusion.NoiseSchedule, got {type(schedule).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if classifier is None:
        classifier = NoisyClassifier(x0.shape[1:], int(labels.max()) + 1, rng=rng)
    dtype = next(iter(classifier.parameters())).dtype
    optimizer = AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    lr_schedule = LRScheduler(optimizer, CosineDecay(steps))
    classifier.train()
    losses = np.empty(steps)
    for step in range(steps):
        rows = rng.integers(0, len(x0), size=batch_size)  # (B,)
        t = schedule.sample_timesteps(rng, batch_size)  # (B,)
        xt = q_sample(schedule, x0[rows].astype(dtype), t, rng=rng)  # (B, ...)
        loss = F.cross_entropy(classifier(Tensor(xt), t), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses[step] = loss.item()
    classifier.eval()
    return classifier, losses
