import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SeedLifecycleStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_STAGE_UNKNOWN: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_DORMANT: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_GERMINATED: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_TRAINING: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_BLENDING: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_SHADOWING: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_PROBATIONARY: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_FOSSILIZED: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_CULLED: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_EMBARGOED: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_RESETTING: _ClassVar[SeedLifecycleStage]
    SEED_STAGE_TERMINATED: _ClassVar[SeedLifecycleStage]

class SeedLifecycleGate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_GATE_UNKNOWN: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G0_SANITY: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G1_GRADIENT_HEALTH: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G2_STABILITY: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G3_INTERFACE: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G4_SYSTEM_IMPACT: _ClassVar[SeedLifecycleGate]
    SEED_GATE_G5_RESET: _ClassVar[SeedLifecycleGate]

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNKNOWN: _ClassVar[HealthStatus]
    HEALTH_STATUS_HEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_DEGRADED: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNHEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_CRITICAL: _ClassVar[HealthStatus]

class CircuitBreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNKNOWN: _ClassVar[CircuitBreakerState]
    CIRCUIT_STATE_CLOSED: _ClassVar[CircuitBreakerState]
    CIRCUIT_STATE_OPEN: _ClassVar[CircuitBreakerState]
    CIRCUIT_STATE_HALF_OPEN: _ClassVar[CircuitBreakerState]

class CommandType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_UNKNOWN: _ClassVar[CommandType]
    COMMAND_SEED: _ClassVar[CommandType]
    COMMAND_ROLLBACK: _ClassVar[CommandType]
    COMMAND_OPTIMIZER: _ClassVar[CommandType]
    COMMAND_CIRCUIT_BREAKER: _ClassVar[CommandType]
    COMMAND_PAUSE: _ClassVar[CommandType]
    COMMAND_EMERGENCY: _ClassVar[CommandType]
    COMMAND_STRUCTURAL_PRUNING: _ClassVar[CommandType]

class SeedOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_OP_UNKNOWN: _ClassVar[SeedOperation]
    SEED_OP_GERMINATE: _ClassVar[SeedOperation]
    SEED_OP_START_TRAINING: _ClassVar[SeedOperation]
    SEED_OP_START_GRAFTING: _ClassVar[SeedOperation]
    SEED_OP_STABILIZE: _ClassVar[SeedOperation]
    SEED_OP_EVALUATE: _ClassVar[SeedOperation]
    SEED_OP_FINE_TUNE: _ClassVar[SeedOperation]
    SEED_OP_FOSSILIZE: _ClassVar[SeedOperation]
    SEED_OP_CULL: _ClassVar[SeedOperation]
    SEED_OP_CANCEL: _ClassVar[SeedOperation]

class MessagePriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_PRIORITY_UNSPECIFIED: _ClassVar[MessagePriority]
    MESSAGE_PRIORITY_LOW: _ClassVar[MessagePriority]
    MESSAGE_PRIORITY_NORMAL: _ClassVar[MessagePriority]
    MESSAGE_PRIORITY_HIGH: _ClassVar[MessagePriority]
    MESSAGE_PRIORITY_CRITICAL: _ClassVar[MessagePriority]

class TelemetryLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_LEVEL_UNSPECIFIED: _ClassVar[TelemetryLevel]
    TELEMETRY_LEVEL_INFO: _ClassVar[TelemetryLevel]
    TELEMETRY_LEVEL_WARNING: _ClassVar[TelemetryLevel]
    TELEMETRY_LEVEL_ERROR: _ClassVar[TelemetryLevel]
    TELEMETRY_LEVEL_CRITICAL: _ClassVar[TelemetryLevel]
SEED_STAGE_UNKNOWN: SeedLifecycleStage
SEED_STAGE_DORMANT: SeedLifecycleStage
SEED_STAGE_GERMINATED: SeedLifecycleStage
SEED_STAGE_TRAINING: SeedLifecycleStage
SEED_STAGE_BLENDING: SeedLifecycleStage
SEED_STAGE_SHADOWING: SeedLifecycleStage
SEED_STAGE_PROBATIONARY: SeedLifecycleStage
SEED_STAGE_FOSSILIZED: SeedLifecycleStage
SEED_STAGE_CULLED: SeedLifecycleStage
SEED_STAGE_EMBARGOED: SeedLifecycleStage
SEED_STAGE_RESETTING: SeedLifecycleStage
SEED_STAGE_TERMINATED: SeedLifecycleStage
SEED_GATE_UNKNOWN: SeedLifecycleGate
SEED_GATE_G0_SANITY: SeedLifecycleGate
SEED_GATE_G1_GRADIENT_HEALTH: SeedLifecycleGate
SEED_GATE_G2_STABILITY: SeedLifecycleGate
SEED_GATE_G3_INTERFACE: SeedLifecycleGate
SEED_GATE_G4_SYSTEM_IMPACT: SeedLifecycleGate
SEED_GATE_G5_RESET: SeedLifecycleGate
HEALTH_STATUS_UNKNOWN: HealthStatus
HEALTH_STATUS_HEALTHY: HealthStatus
HEALTH_STATUS_DEGRADED: HealthStatus
HEALTH_STATUS_UNHEALTHY: HealthStatus
HEALTH_STATUS_CRITICAL: HealthStatus
CIRCUIT_STATE_UNKNOWN: CircuitBreakerState
CIRCUIT_STATE_CLOSED: CircuitBreakerState
CIRCUIT_STATE_OPEN: CircuitBreakerState
CIRCUIT_STATE_HALF_OPEN: CircuitBreakerState
COMMAND_UNKNOWN: CommandType
COMMAND_SEED: CommandType
COMMAND_ROLLBACK: CommandType
COMMAND_OPTIMIZER: CommandType
COMMAND_CIRCUIT_BREAKER: CommandType
COMMAND_PAUSE: CommandType
COMMAND_EMERGENCY: CommandType
COMMAND_STRUCTURAL_PRUNING: CommandType
SEED_OP_UNKNOWN: SeedOperation
SEED_OP_GERMINATE: SeedOperation
SEED_OP_START_TRAINING: SeedOperation
SEED_OP_START_GRAFTING: SeedOperation
SEED_OP_STABILIZE: SeedOperation
SEED_OP_EVALUATE: SeedOperation
SEED_OP_FINE_TUNE: SeedOperation
SEED_OP_FOSSILIZE: SeedOperation
SEED_OP_CULL: SeedOperation
SEED_OP_CANCEL: SeedOperation
MESSAGE_PRIORITY_UNSPECIFIED: MessagePriority
MESSAGE_PRIORITY_LOW: MessagePriority
MESSAGE_PRIORITY_NORMAL: MessagePriority
MESSAGE_PRIORITY_HIGH: MessagePriority
MESSAGE_PRIORITY_CRITICAL: MessagePriority
TELEMETRY_LEVEL_UNSPECIFIED: TelemetryLevel
TELEMETRY_LEVEL_INFO: TelemetryLevel
TELEMETRY_LEVEL_WARNING: TelemetryLevel
TELEMETRY_LEVEL_ERROR: TelemetryLevel
TELEMETRY_LEVEL_CRITICAL: TelemetryLevel

class CommandSeedOperation(_message.Message):
    __slots__ = ("operation", "blueprint_id", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    operation: SeedOperation
    blueprint_id: str
    parameters: _containers.ScalarMap[str, float]
    def __init__(self, operation: _Optional[_Union[SeedOperation, str]] = ..., blueprint_id: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CommandOptimizerAdjustment(_message.Message):
    __slots__ = ("optimizer_id", "hyperparameters")
    class HyperparametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OPTIMIZER_ID_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    optimizer_id: str
    hyperparameters: _containers.ScalarMap[str, float]
    def __init__(self, optimizer_id: _Optional[str] = ..., hyperparameters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CommandCircuitBreaker(_message.Message):
    __slots__ = ("desired_state", "rationale")
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    desired_state: CircuitBreakerState
    rationale: str
    def __init__(self, desired_state: _Optional[_Union[CircuitBreakerState, str]] = ..., rationale: _Optional[str] = ...) -> None: ...

class AdaptationCommand(_message.Message):
    __slots__ = ("version", "command_id", "command_type", "target_seed_id", "execution_deadline_ms", "issued_at", "issued_by", "seed_operation", "optimizer_adjustment", "circuit_breaker", "rollback_payload", "annotations")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEED_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    SEED_OPERATION_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_BREAKER_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    command_id: str
    command_type: CommandType
    target_seed_id: str
    execution_deadline_ms: int
    issued_at: _timestamp_pb2.Timestamp
    issued_by: str
    seed_operation: CommandSeedOperation
    optimizer_adjustment: CommandOptimizerAdjustment
    circuit_breaker: CommandCircuitBreaker
    rollback_payload: _struct_pb2.Struct
    annotations: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[int] = ..., command_id: _Optional[str] = ..., command_type: _Optional[_Union[CommandType, str]] = ..., target_seed_id: _Optional[str] = ..., execution_deadline_ms: _Optional[int] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., issued_by: _Optional[str] = ..., seed_operation: _Optional[_Union[CommandSeedOperation, _Mapping]] = ..., optimizer_adjustment: _Optional[_Union[CommandOptimizerAdjustment, _Mapping]] = ..., circuit_breaker: _Optional[_Union[CommandCircuitBreaker, _Mapping]] = ..., rollback_payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., annotations: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SeedState(_message.Message):
    __slots__ = ("seed_id", "stage", "gradient_norm", "learning_rate", "layer_depth", "metrics", "age_epochs", "risk_score")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LAYER_DEPTH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AGE_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    RISK_SCORE_FIELD_NUMBER: _ClassVar[int]
    seed_id: str
    stage: SeedLifecycleStage
    gradient_norm: float
    learning_rate: float
    layer_depth: int
    metrics: _containers.ScalarMap[str, float]
    age_epochs: int
    risk_score: float
    def __init__(self, seed_id: _Optional[str] = ..., stage: _Optional[_Union[SeedLifecycleStage, str]] = ..., gradient_norm: _Optional[float] = ..., learning_rate: _Optional[float] = ..., layer_depth: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., age_epochs: _Optional[int] = ..., risk_score: _Optional[float] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("name", "value", "unit", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    unit: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TelemetryEvent(_message.Message):
    __slots__ = ("event_id", "description", "level", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    description: str
    level: TelemetryLevel
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., description: _Optional[str] = ..., level: _Optional[_Union[TelemetryLevel, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TraceSpan(_message.Message):
    __slots__ = ("span_id", "parent_span_id", "name", "start_time", "end_time", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    span_id: str
    parent_span_id: str
    name: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SystemHealth(_message.Message):
    __slots__ = ("status", "summary", "indicators")
    class IndicatorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INDICATORS_FIELD_NUMBER: _ClassVar[int]
    status: HealthStatus
    summary: str
    indicators: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[_Union[HealthStatus, str]] = ..., summary: _Optional[str] = ..., indicators: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TelemetryPacket(_message.Message):
    __slots__ = ("packet_id", "timestamp", "source_subsystem", "level", "metrics", "events", "spans", "system_health")
    PACKET_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SUBSYSTEM_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_HEALTH_FIELD_NUMBER: _ClassVar[int]
    packet_id: str
    timestamp: _timestamp_pb2.Timestamp
    source_subsystem: str
    level: TelemetryLevel
    metrics: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    events: _containers.RepeatedCompositeFieldContainer[TelemetryEvent]
    spans: _containers.RepeatedCompositeFieldContainer[TraceSpan]
    system_health: SystemHealth
    def __init__(self, packet_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_subsystem: _Optional[str] = ..., level: _Optional[_Union[TelemetryLevel, str]] = ..., metrics: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[TelemetryEvent, _Mapping]]] = ..., spans: _Optional[_Iterable[_Union[TraceSpan, _Mapping]]] = ..., system_health: _Optional[_Union[SystemHealth, _Mapping]] = ...) -> None: ...
