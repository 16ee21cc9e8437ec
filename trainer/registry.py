"""Registries of the model's pluggable parts: the config's choices are their keys.

Four kinds of component are chosen by name in the config; each name is a key
of one registry below. The built-in names are declared here (so that
`trainer.config` checks a choice without importing TensorFlow); the built-in
classes register themselves under those names where they are defined
(`trainer.layers`, `trainer.losses`). A user adds a component by registering
it in a module of their own and listing that module under `plugins:` in the
config (see `trainer.config.plugins`): every command that reads the config (or
a model directory's recorded config) imports the plugins first, so `validate`,
`train`, `evaluate`, `export` and `verify-export` all know the component.

    from trainer.registry import TOWERS

    @TOWERS.register("wide")
    class WideTower(tf.keras.layers.Layer):
        def __init__(self, num_fields, out_dim, sizes, width=64, **kwargs): ...

and in the YAML: ``towers: [mlp, {name: wide, params: {width: 128}}]``. The
keys under `params:` are passed to the component as keyword arguments and are
checked against its signature when the config is loaded.

What each kind is called with, and must return:

- `TOWERS` (`model.student.towers`): ``factory(num_fields=, out_dim=, sizes=, **params)`` -> a Keras layer;
  called with the list of a tower side's encoded fields (``[B, d_i]`` tensors, after the optional SENet
  re-weighting, plus the dual augmented vector when enabled) it returns ``[B, out_dim]``. Several towers
  of one side run in parallel and are fused with learned softmax weights. A tower sees one side only, so
  item vectors stay computable without the user. Built-in: mlp (layer `sizes`), dcn (cross layers over the
  concatenated fields), fm (pairwise factor interactions).
- `SIMILARITIES` (`model.student.similarity`): ``factory(dim=, **params)`` -> a subclass of
  `trainer.layers.similarity.Similarity`, overriding `user_vector(u)` and `item_vector(v)` (each
  ``[B, dim] -> [B, d]``, each from its own side only). The score is always
  ``logit = user_vector(u) . item_vector(v) + bias`` (`Similarity.logit`): the serving signatures, the
  ONNX graphs, the item vectors of `embed-items` and a scoring service rely on that form (one matrix
  product of a user vector with precomputed item vectors). Built-in: dot, cosine, multi_head.
- `DISTILLATION_LOSSES` (`model.distill.loss`): ``factory(**params)`` -> a callable
  ``loss(teacher_logit, student_logit, weights, groups) -> scalar`` (teacher_logit under stop-gradient,
  ``[B]`` each; groups: int32 group ids ``[B]``, given only when the component's attribute
  ``needs_groups`` is true, else None). Built-in: mse, cross_entropy, pairwise.
- `REGRESSION_LOSSES` (`model.teacher.regression_loss`): ``factory(**params)`` -> an object with
  ``loss(target, output, weights) -> scalar`` (target: the label after the spec's transform),
  ``estimate(output)`` (the predicted target, for evaluation) and ``probability(output)`` (a score in
  [0, 1) that rises with the target, for the fused score). Built-in: mse, weighted_logistic.
"""
from collections.abc import Callable
from typing import Any

_UNSET = object()


class RegistryError(LookupError):
    """A component name is unknown, registered twice, or a built-in is not loaded."""


class Registry:
    """Named components of one kind; see the module docstring for what each kind must be."""

    def __init__(self, kind: str, builtin: tuple[str, ...], context: tuple[str, ...] = ()):
        """
        Args:
          kind: what the components are ("tower", ...), for messages.
          builtin: the names of the built-in components, registered by the modules that define them.
          context: the keyword arguments prerank itself passes to every factory of this kind (a component's
            `params` are the others).
        """
        self.kind = kind
        self.builtin = tuple(builtin)
        self.context = tuple(context)
        self._components: dict[str, Any] = {}

    def register(self, name: str, component: Any = _UNSET) -> Any:
        """Register `component` under `name`; without `component`, a decorator that does so.

        Registering the same object again is a no-op (a plugin module imported twice); another object
        under a taken name is refused.
        """
        if component is _UNSET:
            return lambda c: self.register(name, c)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self.builtin and not getattr(component, "__module__", "").startswith("trainer."):
            raise RegistryError(f"'{name}' is the name of a built-in {self.kind}; register {_describe(component)} "
                                "under another name")
        have = self._components.get(name)
        if have is not None and have is not component:
            raise RegistryError(f"{self.kind} '{name}' is already registered ({_describe(have)}); "
                                f"cannot also register {_describe(component)}")
        self._components[name] = component
        return component

    def names(self) -> tuple[str, ...]:
        """Every name a config may choose: the built-in ones and those registered so far."""
        return self.builtin + tuple(n for n in self._components if n not in self.builtin)

    def __contains__(self, name: object) -> bool:
        return name in self.builtin or name in self._components

    def get(self, name: str) -> Any:
        """The component registered under `name`."""
        if name in self._components:
            return self._components[name]
        if name in self.builtin:
            raise RegistryError(f"built-in {self.kind} '{name}' is not loaded: import the module that defines it "
                                "(trainer.layers or trainer.losses) first")
        raise RegistryError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())} (a custom one "
                            "must be registered by a module listed under plugins:)")

    def is_builtin(self, name: str) -> bool:
        return name in self.builtin

    def loaded(self, name: str) -> bool:
        """Whether `name` is registered now (a built-in is once its module was imported)."""
        return name in self._components

    def factory(self, name: str) -> Callable[..., Any]:
        """The component as a callable to construct it (a class or a function)."""
        component = self.get(name)
        if not callable(component):
            raise RegistryError(f"{self.kind} '{name}' is {_describe(component)}, not a class or function")
        return component


def _describe(component: Any) -> str:
    module = getattr(component, "__module__", None)
    name = getattr(component, "__qualname__", None) or type(component).__name__
    return f"{module}.{name}" if module else name


TOWERS = Registry("tower", builtin=("mlp", "dcn", "fm"), context=("num_fields", "out_dim", "sizes"))
SIMILARITIES = Registry("similarity", builtin=("dot", "cosine", "multi_head"), context=("dim",))
DISTILLATION_LOSSES = Registry("distillation loss", builtin=("mse", "cross_entropy", "pairwise"))
REGRESSION_LOSSES = Registry("regression loss", builtin=("mse", "weighted_logistic"))
