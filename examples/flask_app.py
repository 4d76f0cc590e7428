#!/usr/bin/env python3
"""The origin story's app: Flask on its development server, one request at a time
(threaded=False). proxyd starts it with PORT in the environment. Same paths as app.py.
Needs Flask (pip install flask).

With OTEL_EXPORTER_OTLP_ENDPOINT set (and pip install opentelemetry-sdk
opentelemetry-exporter-otlp-proto-http opentelemetry-instrumentation-flask), its spans go to
that OpenTelemetry collector, children of the proxyd span that sent each request (its
traceparent header): one trace across both (docs/operations.md, "Tracing").
"""
import logging
import os
import sys
import time

from flask import Flask, request

app = Flask(__name__)


def traced(flask_app):
    """Exports the app's spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set: the
    standard OTEL_* variables (OTEL_SERVICE_NAME, OTEL_BSP_SCHEDULE_DELAY, ...) apply."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument_app(flask_app)


traced(app)


@app.route("/")
def index():
    return f"hello from pid {os.getpid()}\n"


@app.route("/pid")
def pid():
    return str(os.getpid())


@app.route("/healthz")
def healthz():
    return "ok\n"


@app.route("/slow")
def slow():
    time.sleep(int(request.args.get("ms", "100")) / 1000)
    return f"hello from pid {os.getpid()}\n"


@app.route("/crash")
def crash():
    sys.stderr.write("crashing on purpose\n")
    sys.stderr.flush()
    os._exit(1)


@app.route("/echo", methods=["POST"])
def echo():
    return request.get_data()


if __name__ == "__main__":
    # Access logs are the proxy's job (gunicorn does not write them by default either); the
    # dev server's line per request costs the one-at-a-time worker time on every request.
    if os.environ.get("APP_ACCESS_LOG") != "1":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=False)
