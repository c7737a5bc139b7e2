"""Start azmlinfsrv bound to loopback only, its log records tagged with the request id.

azmlinfsrv always binds 0.0.0.0, which would let anyone on the network call an instance's
/score without the gateway's key. Run as a script by the instance's own interpreter (the host
package is not importable there): it narrows the bind address, then runs the server's own
entry point with the same arguments.

azmlinfsrv reads the gateway's ``x-request-id`` (into ``flask.g.request_id``) but logs it
nowhere; its records while serving a request (its own "POST /score 200 ..." line, a
``score.py`` exception, ``print()`` in ``run()``) get ``request_id=<id>`` in front of the
message here, so ``online-deployment get-logs --request-id`` finds them beside the gateway's
access-log line. Records of its own formatter only: a user's ``logging.json`` keeps its format.
"""

import os
import runpy

import azureml_inference_server_http.constants as constants

REQUEST_ID_TAG = "request_id="  # host.instances.REQUEST_ID_TAG (not importable here)


def tag_request_ids() -> None:
    try:
        from azureml_inference_server_http.log_config import AMLLogFormatter
        from flask import g, has_request_context
    except ImportError:  # another azmlinfsrv layout: serve untagged rather than not at all
        return
    plain = AMLLogFormatter.formatMessage

    def format_message(self, record):  # type: ignore[no-untyped-def]
        # logging.Formatter.format sets record.message afresh before each call.
        if has_request_context():
            request_id = g.get("request_id")
            if request_id:
                record.message = f"{REQUEST_ID_TAG}{request_id} {record.message}"
        return plain(self, record)

    AMLLogFormatter.formatMessage = format_message


constants.DEFAULT_HOST = os.environ.get("TIDEGATE_INSTANCE_BIND", "127.0.0.1")
tag_request_ids()
runpy.run_module("azureml_inference_server_http.amlserver", run_name="__main__", alter_sys=True)
