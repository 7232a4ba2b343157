"""The gRPC services: PredictionService, ModelService and the standard health service.

Follows tensorflow_serving/model_servers/prediction_service_impl.cc, model_service_impl.cc and
grpc's health.proto (--enable_grpc_healthcheck_service).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .status import ServingError, clip
from .bundle import CLASSIFY_METHOD, REGRESS_METHOD
from .predict import fill_tensor_proto, predict
from .core import config_entries, select_version
from .inference import classify_or_regress, fill_model_spec, multi_inference
from .metrics import Activity
from .metadata import model_metadata, model_status

if TYPE_CHECKING:
    from .core import Models
    from .metrics import Metrics

log = logging.getLogger("tflab.model_server")


def make_grpc_services(models: Models, metrics: Metrics | None = None, reload=None,
                       activity: Activity | None = None):
    """The PredictionService and ModelService servicers over the models (requests stamp activity, when given)."""
    import grpc
    from tensorflow_serving.apis import (classification_pb2, model_management_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc, regression_pb2)

    local = threading.local()
    activity = activity if activity is not None else Activity(None)

    def abort(context, err: ServingError):
        local.code = err.code_name
        context.abort(getattr(grpc.StatusCode, err.code_name), clip(err.message))

    def recorded(api: str):
        """Metrics for Predict, Classify and Regress, as prediction_service_impl.cc records them (and the
        watchdog's activity stamp, which is all that is left without metrics)."""
        def wrap(method):
            if metrics is None:
                def stamped(self, request, context):
                    try:
                        return method(self, request, context)
                    finally:
                        activity.stamp()
                return stamped

            def call(self, request, context):
                started = time.perf_counter()
                local.code = "UNKNOWN"
                try:
                    answer = method(self, request, context)
                    local.code = "OK"
                    return answer
                finally:
                    activity.stamp()
                    metrics.record(request.model_spec.name, api, "GRPC", local.code,
                                   (time.perf_counter() - started) * 1e6)
            return call
        return wrap

    def need_spec(request):
        if not request.HasField("model_spec"):
            raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")

    def runtime_error(exc) -> ServingError:
        """An unexpected error while running a request (a TensorFlow error on bad data) as INVALID_ARGUMENT."""
        return ServingError("INVALID_ARGUMENT", (str(exc).strip().splitlines() or ["error"])[0])

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @recorded("Predict")
        def Predict(self, request, context):
            try:
                need_spec(request)
                _, loaded = select_version(models, request.model_spec)
                name, outputs = predict(loaded, request)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:  # a TensorFlow runtime error on bad data
                return abort(context, runtime_error(exc))
            response = predict_pb2.PredictResponse()
            spec = response.model_spec
            spec.name = request.model_spec.name
            spec.version.value = loaded.version
            spec.signature_name = name
            for key, value in outputs.items():
                fill_tensor_proto(response.outputs[key], value)
            return response

        @recorded("Classify")
        def Classify(self, request, context):
            """classification_service.cc, then classifier.cc RunClassify."""
            return self._task(request, context, classification_pb2.ClassificationResponse(), CLASSIFY_METHOD)

        @recorded("Regress")
        def Regress(self, request, context):
            """regression_service.cc, then regressor.cc RunRegress."""
            return self._task(request, context, regression_pb2.RegressionResponse(), REGRESS_METHOD)

        def _task(self, request, context, response, method):
            """Classify or Regress: the model's signature of that method run on the request's examples."""
            try:
                need_spec(request)
                _, loaded = select_version(models, request.model_spec)
                classify_or_regress(loaded, request.model_spec, request.input, method, response.result)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:
                return abort(context, runtime_error(exc))
            fill_model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name,
                            loaded.version)
            return response

        def MultiInference(self, request, context):
            """multi_inference_helper.cc RunMultiInferenceWithServerCore (not counted in the metrics, as there)."""
            try:
                response = multi_inference(models, request)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:
                return abort(context, runtime_error(exc))
            activity.stamp()
            return response

        def GetModelMetadata(self, request, context):
            try:
                response = model_metadata(models, request)
            except ServingError as err:
                return abort(context, err)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                return model_status(models, request)
            except ServingError as err:
                return abort(context, err)

        def HandleReloadConfigRequest(self, request, context):
            """model_service_impl.cc: the outcome is the call's status (and the response's, which a failed call
            does not carry)."""
            try:
                if request.config.WhichOneof("config") != "model_config_list":
                    raise ServingError("INVALID_ARGUMENT", "ServerModelConfig type not supported by "
                                                           "HandleReloadConfigRequest. Only ModelConfigList is "
                                                           "currently supported")
                entries = config_entries(request.config)
                if reload is not None:
                    reload(entries, context.is_active)
            except ServingError as err:
                log.error("ReloadConfig failed: %s", clip(err.message))
                return abort(context, err)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.SetInParent()
            return response

    return PredictionService(), ModelService(), prediction_service_pb2_grpc, model_service_pb2_grpc


def health_service(serving: threading.Event):
    """--enable_grpc_healthcheck_service (model_servers/server.cc): gRPC's standard health service,
    grpc.health.v1.Health (grpc's doc/health-checking.md), as gRPC C++'s default one answers it: Check of ""
    (the server), "ModelService" and "PredictionService" is SERVING while the server serves (NOT_SERVING once it
    stops), any other name NOT_FOUND. Its two messages are built here from their proto definition, so that no
    other package is needed. Watch, a stream that would hold a worker thread per watcher, is not offered."""
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tflab/grpc_health_v1.proto", package="grpc.health.v1",
                                               syntax="proto3")
    proto.message_type.add(name="HealthCheckRequest").field.add(name="service", number=1, type=field.TYPE_STRING,
                                                                label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=field.TYPE_ENUM, label=field.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    request_class = classes["grpc.health.v1.HealthCheckRequest"]
    response_class = classes["grpc.health.v1.HealthCheckResponse"]

    def check(request, context):
        if request.service not in ("", "ModelService", "PredictionService"):
            context.abort(grpc.StatusCode.NOT_FOUND, "")
        return response_class(status=1 if serving.is_set() else 2)

    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=request_class.FromString,
                                                     response_serializer=response_class.SerializeToString)})
