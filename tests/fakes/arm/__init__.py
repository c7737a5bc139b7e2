"""A fake of Azure Resource Manager's compute API: what the `azure` compute provider calls, at
the API versions the installed SDKs send, over TLS with a static bearer token. Its VMs are real
local processes running the provider's own custom data. Run: `python -m tests.fakes.arm`."""
