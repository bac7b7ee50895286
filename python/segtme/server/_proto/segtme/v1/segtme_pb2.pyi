from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_TYPE_UNSPECIFIED: _ClassVar[OutputType]
    DETECTIONS: _ClassVar[OutputType]
    CELLS: _ClassVar[OutputType]

class PixelEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_ENCODING_UNSPECIFIED: _ClassVar[PixelEncoding]
    PNG: _ClassVar[PixelEncoding]
    JPEG: _ClassVar[PixelEncoding]
    RAW_RGB: _ClassVar[PixelEncoding]
OUTPUT_TYPE_UNSPECIFIED: OutputType
DETECTIONS: OutputType
CELLS: OutputType
PIXEL_ENCODING_UNSPECIFIED: PixelEncoding
PNG: PixelEncoding
JPEG: PixelEncoding
RAW_RGB: PixelEncoding

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "device", "models_loaded", "default_model", "max_batch", "limits")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    version: str
    device: str
    models_loaded: _containers.RepeatedScalarFieldContainer[str]
    default_model: str
    max_batch: int
    limits: Limits
    def __init__(self, version: _Optional[str] = ..., device: _Optional[str] = ..., models_loaded: _Optional[_Iterable[str]] = ..., default_model: _Optional[str] = ..., max_batch: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_tile_pixels", "max_tiles_per_stream", "max_concurrent_streams")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TILE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TILES_PER_STREAM_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_tile_pixels: int
    max_tiles_per_stream: int
    max_concurrent_streams: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_tile_pixels: _Optional[int] = ..., max_tiles_per_stream: _Optional[int] = ..., max_concurrent_streams: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassDef(_message.Message):
    __slots__ = ("id", "name", "color", "role", "level")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    color: _containers.RepeatedScalarFieldContainer[int]
    role: str
    level: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., color: _Optional[_Iterable[int]] = ..., role: _Optional[str] = ..., level: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "classes", "mpp", "tile_size", "tile_overlap", "description", "substitutions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MPP_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUBSTITUTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassDef]
    mpp: float
    tile_size: int
    tile_overlap: int
    description: str
    substitutions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassDef, _Mapping]]] = ..., mpp: _Optional[float] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ..., description: _Optional[str] = ..., substitutions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("model", "image_mpp", "annotation_geojson", "output_type", "narrative_backend", "per_tile_results", "job_id", "expected_tiles", "annotation_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MPP_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_GEOJSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    PER_TILE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TILES_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    image_mpp: float
    annotation_geojson: str
    output_type: OutputType
    narrative_backend: str
    per_tile_results: bool
    job_id: str
    expected_tiles: int
    annotation_id: str
    def __init__(self, model: _Optional[str] = ..., image_mpp: _Optional[float] = ..., annotation_geojson: _Optional[str] = ..., output_type: _Optional[_Union[OutputType, str]] = ..., narrative_backend: _Optional[str] = ..., per_tile_results: _Optional[bool] = ..., job_id: _Optional[str] = ..., expected_tiles: _Optional[int] = ..., annotation_id: _Optional[str] = ...) -> None: ...

class Rect(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Tile(_message.Message):
    __slots__ = ("index", "x", "y", "downsample", "width", "height", "core", "encoding", "pixels")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CORE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    index: int
    x: int
    y: int
    downsample: float
    width: int
    height: int
    core: Rect
    encoding: PixelEncoding
    pixels: bytes
    def __init__(self, index: _Optional[int] = ..., x: _Optional[int] = ..., y: _Optional[int] = ..., downsample: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., core: _Optional[_Union[Rect, _Mapping]] = ..., encoding: _Optional[_Union[PixelEncoding, str]] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("config", "tile", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: JobConfig
    tile: Tile
    end: End
    def __init__(self, config: _Optional[_Union[JobConfig, _Mapping]] = ..., tile: _Optional[_Union[Tile, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("tiles_done", "tiles_expected", "nuclei_so_far", "fraction", "stage")
    TILES_DONE_FIELD_NUMBER: _ClassVar[int]
    TILES_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    NUCLEI_SO_FAR_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    tiles_done: int
    tiles_expected: int
    nuclei_so_far: int
    fraction: float
    stage: str
    def __init__(self, tiles_done: _Optional[int] = ..., tiles_expected: _Optional[int] = ..., nuclei_so_far: _Optional[int] = ..., fraction: _Optional[float] = ..., stage: _Optional[str] = ...) -> None: ...

class NucleiBatch(_message.Message):
    __slots__ = ("tile_index", "features_geojson", "count")
    TILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FEATURES_GEOJSON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tile_index: int
    features_geojson: str
    count: int
    def __init__(self, tile_index: _Optional[int] = ..., features_geojson: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class TMEReport(_message.Message):
    __slots__ = ("report_json", "narrative", "tokens", "measurements", "nuclei_total", "annotation_id", "seconds")
    class MeasurementsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    NUCLEI_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    narrative: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    measurements: _containers.ScalarMap[str, float]
    nuclei_total: int
    annotation_id: str
    seconds: float
    def __init__(self, report_json: _Optional[str] = ..., narrative: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ..., measurements: _Optional[_Mapping[str, float]] = ..., nuclei_total: _Optional[int] = ..., annotation_id: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("progress", "nuclei", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NUCLEI_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    nuclei: NucleiBatch
    report: TMEReport
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., nuclei: _Optional[_Union[NucleiBatch, _Mapping]] = ..., report: _Optional[_Union[TMEReport, _Mapping]] = ...) -> None: ...

class AnalyzeImageRequest(_message.Message):
    __slots__ = ("model", "image_mpp", "encoding", "pixels", "width", "height", "output_type", "narrative_backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MPP_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    image_mpp: float
    encoding: PixelEncoding
    pixels: bytes
    width: int
    height: int
    output_type: OutputType
    narrative_backend: str
    def __init__(self, model: _Optional[str] = ..., image_mpp: _Optional[float] = ..., encoding: _Optional[_Union[PixelEncoding, str]] = ..., pixels: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., output_type: _Optional[_Union[OutputType, str]] = ..., narrative_backend: _Optional[str] = ...) -> None: ...

class AnalyzeImageResponse(_message.Message):
    __slots__ = ("features_geojson", "report")
    FEATURES_GEOJSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    features_geojson: str
    report: TMEReport
    def __init__(self, features_geojson: _Optional[str] = ..., report: _Optional[_Union[TMEReport, _Mapping]] = ...) -> None: ...

class NarrateRequest(_message.Message):
    __slots__ = ("features_json", "narrative_backend", "taxonomy")
    FEATURES_JSON_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    TAXONOMY_FIELD_NUMBER: _ClassVar[int]
    features_json: str
    narrative_backend: str
    taxonomy: str
    def __init__(self, features_json: _Optional[str] = ..., narrative_backend: _Optional[str] = ..., taxonomy: _Optional[str] = ...) -> None: ...

class NarrateResponse(_message.Message):
    __slots__ = ("report_json", "narrative", "tokens")
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    NARRATIVE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    narrative: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, report_json: _Optional[str] = ..., narrative: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...
