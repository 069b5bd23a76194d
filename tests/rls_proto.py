"""Envoy's RLS v3 messages and Envoy's SetEnvoyFilterStateArguments, declared for the
official Python `protobuf` runtime from the upstream .proto field numbers (no protoc,
no generated code): the independent encoder/decoder tollgate's hand-written protobuf is
checked against (tests/test_global_proto.py) and the e2e tests' fake RLS servers use.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name


def _build():
    pool = descriptor_pool.DescriptorPool()
    dur = descriptor_pb2.FileDescriptorProto(
        name="tg/duration.proto", package="google.protobuf", syntax="proto3"
    )
    m = dur.message_type.add(name="Duration")
    _field(m, "seconds", 1, F.TYPE_INT64)
    _field(m, "nanos", 2, F.TYPE_INT32)
    pool.Add(dur)

    rls = descriptor_pb2.FileDescriptorProto(
        name="tg/rls.proto",
        package="envoy.service.ratelimit.v3",
        syntax="proto3",
        dependency=["tg/duration.proto"],
    )
    # envoy.extensions.common.ratelimit.v3.RateLimitDescriptor, inlined here.
    d = rls.message_type.add(name="RateLimitDescriptor")
    e = d.nested_type.add(name="Entry")
    _field(e, "key", 1, F.TYPE_STRING)
    _field(e, "value", 2, F.TYPE_STRING)
    _field(d, "entries", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".envoy.service.ratelimit.v3.RateLimitDescriptor.Entry")
    req = rls.message_type.add(name="RateLimitRequest")
    _field(req, "domain", 1, F.TYPE_STRING)
    _field(req, "descriptors", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".envoy.service.ratelimit.v3.RateLimitDescriptor")
    _field(req, "hits_addend", 3, F.TYPE_UINT32)

    resp = rls.message_type.add(name="RateLimitResponse")
    code = resp.enum_type.add(name="Code")
    for i, n in enumerate(["UNKNOWN", "OK", "OVER_LIMIT"]):
        code.value.add(name=n, number=i)
    rl = resp.nested_type.add(name="RateLimit")
    unit = rl.enum_type.add(name="Unit")
    for i, n in enumerate(["UNKNOWN", "SECOND", "MINUTE", "HOUR", "DAY", "MONTH", "YEAR", "WEEK"]):
        unit.value.add(name=n, number=i)
    _field(rl, "requests_per_unit", 1, F.TYPE_UINT32)
    _field(rl, "unit", 2, F.TYPE_ENUM,
           type_name=".envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit")
    _field(rl, "name", 3, F.TYPE_STRING)
    ds = resp.nested_type.add(name="DescriptorStatus")
    _field(ds, "code", 1, F.TYPE_ENUM, type_name=".envoy.service.ratelimit.v3.RateLimitResponse.Code")
    _field(ds, "current_limit", 2, F.TYPE_MESSAGE,
           type_name=".envoy.service.ratelimit.v3.RateLimitResponse.RateLimit")
    _field(ds, "limit_remaining", 3, F.TYPE_UINT32)
    _field(ds, "duration_until_reset", 4, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    hv = resp.nested_type.add(name="HeaderValue")  # envoy.config.core.v3.HeaderValue
    _field(hv, "key", 1, F.TYPE_STRING)
    _field(hv, "value", 2, F.TYPE_STRING)
    _field(resp, "overall_code", 1, F.TYPE_ENUM,
           type_name=".envoy.service.ratelimit.v3.RateLimitResponse.Code")
    _field(resp, "statuses", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus")
    _field(resp, "response_headers_to_add", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".envoy.service.ratelimit.v3.RateLimitResponse.HeaderValue")
    _field(resp, "request_headers_to_add", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".envoy.service.ratelimit.v3.RateLimitResponse.HeaderValue")
    _field(resp, "raw_body", 5, F.TYPE_BYTES)
    pool.Add(rls)

    fs = descriptor_pb2.FileDescriptorProto(
        name="tg/set_envoy_filter_state.proto",
        package="envoy.source.extensions.common.wasm",
        syntax="proto3",
    )
    span = fs.enum_type.add(name="LifeSpan")
    for i, n in enumerate(["FilterChain", "DownstreamRequest", "DownstreamConnection"]):
        span.value.add(name=n, number=i)
    a = fs.message_type.add(name="SetEnvoyFilterStateArguments")
    _field(a, "path", 1, F.TYPE_STRING)
    _field(a, "value", 2, F.TYPE_STRING)
    _field(a, "span", 3, F.TYPE_ENUM, type_name=".envoy.source.extensions.common.wasm.LifeSpan")
    pool.Add(fs)

    get = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n))
    return (
        get("envoy.service.ratelimit.v3.RateLimitRequest"),
        get("envoy.service.ratelimit.v3.RateLimitResponse"),
        get("envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments"),
    )


RateLimitRequest, RateLimitResponse, SetEnvoyFilterStateArguments = _build()
