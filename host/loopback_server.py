"""Start azmlinfsrv bound to loopback only.

azmlinfsrv always binds 0.0.0.0, which would let anyone on the network call an instance's
/score without the gateway's key. Run as a script by the instance's own interpreter (the host
package is not importable there): it narrows the bind address, then runs the server's own
entry point with the same arguments.
"""

import os
import runpy

import azureml_inference_server_http.constants as constants

constants.DEFAULT_HOST = os.environ.get("TIDEGATE_INSTANCE_BIND", "127.0.0.1")
runpy.run_module("azureml_inference_server_http.amlserver", run_name="__main__", alter_sys=True)
