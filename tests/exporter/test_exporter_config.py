"""Settings precedence: argument > OTEL_* environment > default; bad env logged, bad argument raised."""

from __future__ import annotations

import logging

import pytest

from exporter.config import DEFAULT_SERVICE_NAME, resolve_settings

EP = "http://127.0.0.1:4318"

# (case id, environment, arguments, expected settings fields)
PRECEDENCE = [
    ("defaults", {}, {}, {
        "enabled": True, "service_name": DEFAULT_SERVICE_NAME, "otlp_endpoint": None,
        "otlp_protocol": "http/protobuf", "traces": "none", "sampler": "parentbased_always_on",
        "sampler_ratio": 1.0, "logs": "none", "loki_url": None,
    }),
    ("env service name", {"OTEL_SERVICE_NAME": "chat"}, {}, {"service_name": "chat"}),
    ("arg beats env service name", {"OTEL_SERVICE_NAME": "chat"}, {"service_name": "hub"}, {"service_name": "hub"}),
    ("env endpoint turns traces and logs on", {"OTEL_EXPORTER_OTLP_ENDPOINT": EP + "/"}, {},
     {"otlp_endpoint": EP, "traces": "otlp", "logs": "otlp"}),
    ("arg endpoint beats env", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.0.0.1:4318"}, {"otlp_endpoint": EP},
     {"otlp_endpoint": EP}),
    ("env protocol grpc", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {}, {"otlp_protocol": "grpc"}),
    ("arg protocol beats env", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {"otlp_protocol": "http/protobuf"},
     {"otlp_protocol": "http/protobuf"}),
    ("env sampler and arg", {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, {},
     {"sampler": "traceidratio", "sampler_ratio": 0.25}),
    ("arg ratio alone means parentbased ratio", {"OTEL_TRACES_SAMPLER": "always_off"}, {"sampler_ratio": 0.1},
     {"sampler": "parentbased_traceidratio", "sampler_ratio": 0.1}),
    ("sdk disabled by env", {"OTEL_SDK_DISABLED": "TRUE"}, {}, {"enabled": False}),
    ("enabled arg beats OTEL_SDK_DISABLED", {"OTEL_SDK_DISABLED": "true"}, {"enabled": True}, {"enabled": True}),
    ("disabled by arg", {}, {"enabled": False}, {"enabled": False}),
    ("loki url turns loki on", {"LOKI_URL": "http://127.0.0.1:3100"}, {},
     {"logs": "loki", "loki_url": "http://127.0.0.1:3100/loki/api/v1/push"}),
    ("loki push url kept", {}, {"loki_url": "http://loki:3100/loki/api/v1/push"},
     {"loki_url": "http://loki:3100/loki/api/v1/push"}),
    ("env logs none beats endpoint default", {"OTEL_EXPORTER_OTLP_ENDPOINT": EP, "OTEL_LOGS_EXPORTER": "none"}, {},
     {"logs": "none", "traces": "otlp"}),
    ("env logs console is local", {"OTEL_LOGS_EXPORTER": "console"}, {}, {"logs": "none"}),
    ("arg logs otlp beats env loki", {"OTEL_EXPORTER_OTLP_ENDPOINT": EP, "OTEL_LOGS_EXPORTER": "loki",
                                      "LOKI_URL": "http://127.0.0.1:3100"}, {"logs": "otlp"}, {"logs": "otlp"}),
    ("env traces none", {"OTEL_EXPORTER_OTLP_ENDPOINT": EP, "OTEL_TRACES_EXPORTER": "none"}, {}, {"traces": "none"}),
    ("injected span exporter traces without endpoint", {}, {"has_span_exporter": True}, {"traces": "otlp"}),
]


@pytest.mark.parametrize("environ,args,expected", [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE])
def test_precedence(environ, args, expected):
    settings = resolve_settings(environ, **args)
    assert {k: getattr(settings, k) for k in expected} == expected


# (environment with one bad value, field, the default it falls back to)
BAD_ENV = [
    ({"OTEL_SDK_DISABLED": "maybe"}, "enabled", True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "otlp_endpoint", None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://host:99999"}, "otlp_endpoint", None),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "otlp_protocol", "http/protobuf"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "sampler", "parentbased_always_on"),
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "sampler_ratio", 1.0),
    ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "sampler_ratio", 1.0),
    ({"OTEL_LOGS_EXPORTER": "syslog"}, "logs", "none"),
    ({"OTEL_LOGS_EXPORTER": "otlp"}, "logs", "none"),  # no endpoint to ship to
    ({"OTEL_LOGS_EXPORTER": "loki"}, "logs", "none"),  # no Loki URL
    ({"OTEL_TRACES_EXPORTER": "otlp"}, "traces", "none"),  # no endpoint
    ({"LOKI_URL": "loki"}, "loki_url", None),
]


@pytest.mark.parametrize("environ,field,default", BAD_ENV, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _, _ in BAD_ENV])
def test_bad_environment_value_is_logged_and_replaced(environ, field, default, caplog):
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        settings = resolve_settings(environ)
    assert getattr(settings, field) == default
    name = next(iter(environ))
    assert any(name in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_good_environment_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        resolve_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": EP, "OTEL_TRACES_SAMPLER": "traceidratio",
                          "OTEL_TRACES_SAMPLER_ARG": "0.5", "OTEL_SDK_DISABLED": "false"})
    assert caplog.records == []


BAD_ARGS = [
    ({"otlp_endpoint": "collector:4318"}, "http:// or https://"),
    ({"otlp_protocol": "http/json"}, "OTLP protocol must be one of"),
    ({"sampler": "sometimes"}, "sampler must be one of"),
    ({"sampler_ratio": 2}, "between 0 and 1"),
    ({"logs": "syslog"}, "logs must be one of"),
    ({"logs": "otlp"}, "needs otlp_endpoint"),
    ({"logs": "loki"}, "needs loki_url"),
    ({"traces": "otlp"}, "needs otlp_endpoint"),
    ({"service_name": "  "}, "must not be empty"),
    ({"enabled": "perhaps"}, "true or false"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[next(iter(a)) for a, _ in BAD_ARGS])
def test_bad_argument_raises(args, message):
    with pytest.raises(ValueError, match=message):
        resolve_settings({}, **args)
