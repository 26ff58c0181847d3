"""pyspark.ml Params generated from the tables of ``sparkvision.settings``: one class shared
by ``ImageClassifier`` and ``ImageClassificationModel`` (as pyspark.ml's own classifiers
do), so ``_copyValues`` carries every Param to the model; ``TrainedNetworkParams`` is its
base and that of the featurizer and explainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasLabelCol,
    HasOutputCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
)

from sparkvision import settings
from sparkvision.errors import InvalidParameterError
from sparkvision.settings import (
    ExplainerSettings,
    FeaturizerSettings,
    NetworkSettings,
    OutputSettings,
    Row,
    TrainSettings,
)

_CONVERTERS: dict[Any, Any] = {
    int: TypeConverters.toInt, float: TypeConverters.toFloat, str: TypeConverters.toString,
    bool: TypeConverters.toBoolean,
}


def _converter(r: Row) -> Any:
    if r.setting.converter is not None:
        return r.setting.converter
    if r.base_type is tuple:
        item = r.type.__args__[0]
        return {int: TypeConverters.toListInt,
                float: TypeConverters.toListFloat}.get(item, TypeConverters.toListString)
    return _CONVERTERS[r.base_type]


def declare_params(cls: type, *tables: type) -> type:
    """Declare on ``cls`` a Param for every row of ``tables`` (unless ``cls`` has it, e.g.
    from a shared pyspark.ml mixin), and ``getX``/``setX`` accessors."""
    for table in tables:
        for r in settings.rows(table):
            if not isinstance(getattr(cls, r.param, None), Param):
                if r.setting.shared:
                    raise TypeError(f"{cls.__name__} lacks the shared Param {r.param}")
                setattr(cls, r.param, Param(Params._dummy(), r.param, r.setting.doc,
                                            typeConverter=_converter(r)))
    return add_param_accessors(cls)


class TableParams(Params):
    """Params whose defaults come from the class's ``_tables``."""

    _tables: tuple[type, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**settings.param_defaults(*self._tables))

    @keyword_only
    def setParams(self, **params: Any) -> Self:
        """Set Params by keyword (None leaves a Param as it is)."""
        set_known(self, self._input_kwargs, *self._tables)
        return self

    def checkTables(self) -> None:
        """Check every table Param's value against its row's choices and range."""
        for table in self._tables:
            settings.check_all(table, self.getOrDefault)

    if TYPE_CHECKING:  # the Params are declared from the tables at import time
        _input_kwargs: dict[str, Any]  # set by pyspark's @keyword_only

        def __getattr__(self, name: str) -> Any: ...


class TrainedNetworkParams(TableParams):
    """The image column and the description of a trained network (name, input shape,
    classes): what the classifier's model, the featurizer and the explainer carry."""

    _tables: tuple[type, ...] = (NetworkSettings,)

    def validateNetworkParams(self) -> None:
        """One check of the network name and image shape (driver side)."""
        from sparkvision.models.registry import validate_model_name

        get = self.getOrDefault
        shape = get("imageShape")
        validate_model_name(get("model"), tuple(shape) if len(shape) == 3 else None)
        if shape and (len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3)):
            raise InvalidParameterError("imageShape", shape, "use [height, width, 1 or 3]")


    def trainedShape(self) -> tuple[int, int, int]:
        """``imageShape`` as (height, width, channels), with the checks of a trained
        network: a full shape, and the class names of its head."""
        shape = list(self.getOrDefault("imageShape"))
        if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
            raise InvalidParameterError("imageShape", shape, "use [height, width, 1 or 3] "
                                        "(the shape the network was trained on)")
        if not self.getOrDefault("classes"):
            raise InvalidParameterError("classes", [], "give the class names of the "
                                        "network's head (its number of outputs)")
        return shape[0], shape[1], shape[2]


class ImageClassifierParams(
    TrainedNetworkParams, HasLabelCol, HasSeed, HasPredictionCol, HasRawPredictionCol,
    HasProbabilityCol,
):
    """Training Params, and the output-column Params of the model."""

    _tables: tuple[type, ...] = (TrainSettings, OutputSettings)

    def validateParams(self) -> None:
        """Raise InvalidParameterError for any out-of-range Param (driver side); a network
        given as an import path must import, with its function."""
        get = self.getOrDefault
        self.validateNetworkParams()
        from sparkvision.models.registry import check_user_network

        check_user_network(get("model"))
        self.checkTables()
        if get("balance") == "weights" and get("classWeights") not in ([], "balanced"):
            raise InvalidParameterError(
                "balance", "weights", "balance='weights' sets classWeights='balanced'; do not "
                "also give explicit classWeights"
            )
        from sparkvision.ml.normalization import check_normalization

        check_normalization(get)
        from sparkvision.ml.transfer import check_pretrained

        check_pretrained(get("pretrained"), get("initWeights"), get("initFrom"))
        if get("initWeights") and get("initFrom"):
            raise InvalidParameterError(
                "initFrom", get("initFrom"), "give either initWeights (a safetensors file) "
                "or initFrom (a model folder), not both")

    def validateInferenceParams(self) -> None:
        """Raise InvalidParameterError for a bad Param of ``transform`` (driver side)."""
        settings.check_all(OutputSettings, self.getOrDefault)


def network_values(model: Any) -> dict[str, Any]:
    """Every ``NetworkSettings`` Param of a trained model (network, input shape, classes,
    image column, normalisation) by name: what a featurizer or explainer takes from it."""
    return {r.param: model.getOrDefault(r.param) for r in settings.rows(NetworkSettings)}


def require_image_column(dataset: Any, image_col: str) -> None:
    """``InvalidParameterError`` naming imageCol unless ``dataset`` has that column."""
    if image_col not in dataset.columns:
        raise InvalidParameterError(
            "imageCol", image_col,
            f"the DataFrame has columns {dataset.columns}; name the image column")


def image_and_output_columns(params: Params, dataset: Any) -> tuple[str, str]:
    """``(imageCol, outputCol)`` of a Transformer that adds one column: the image column
    must be in ``dataset`` and the output column named (``InvalidParameterError``)."""
    image_col = params.getOrDefault("imageCol")
    require_image_column(dataset, image_col)
    out = params.getOrDefault("outputCol")
    if not out:
        raise InvalidParameterError("outputCol", out, "name the output column")
    return image_col, out


def add_param_accessors(cls: type) -> type:
    """``getX``/``setX`` for every Param ``x`` of ``cls``, as pyspark.ml Params have them."""
    for name in dir(cls):
        if not isinstance(getattr(cls, name, None), Param):
            continue
        cap = name[0].upper() + name[1:]

        def getter(self: Params, _name: str = name) -> Any:
            return self.getOrDefault(_name)

        def setter(self: Params, value: Any, _name: str = name) -> Params:
            return self._set(**{_name: value})

        getter.__doc__ = f"Gets the value of {name} or its default value."
        setter.__doc__ = f"Sets the value of :py:attr:`{name}`."
        if not hasattr(cls, f"get{cap}"):
            setattr(cls, f"get{cap}", getter)
        if not hasattr(cls, f"set{cap}"):
            setattr(cls, f"set{cap}", setter)
    return cls


def table_params(table: type) -> tuple[str, ...]:
    """The Param names of a table's rows (what a constructor's ``**params`` may hold)."""
    return tuple(r.param for r in settings.rows(table))


def set_known(instance: Params, params: dict[str, Any], *tables: type) -> None:
    """``instance._set`` the non-None ``params``; a name no table has is a TypeError, as
    for any unknown keyword argument."""
    known = {p for t in tables for p in table_params(t)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise TypeError(f"{type(instance).__name__} got unexpected keyword argument(s) "
                        f"{', '.join(unknown)}; its Params are {', '.join(sorted(known))}")
    instance._set(**{k: v for k, v in params.items() if v is not None})


declare_params(TrainedNetworkParams, NetworkSettings)
declare_params(ImageClassifierParams, TrainSettings, OutputSettings)
# the featurizer's and explainer's extra rows go on their own classes (ml/featurizer.py,
# ml/explainer.py) through declare_params as well
__all__ = ["ExplainerSettings", "FeaturizerSettings", "HasOutputCol", "ImageClassifierParams",
           "TableParams", "TrainedNetworkParams", "add_param_accessors", "declare_params",
           "image_and_output_columns", "require_image_column", "set_known"]
