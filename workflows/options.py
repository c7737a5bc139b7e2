"""Timeouts and retry policies of every activity call, in one place."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

PUSH = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=3), maximum_attempts=5),
}
KEYS = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=3), maximum_attempts=10),
}
DEPROVISION = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=20),
}
MONITOR = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3),
}
# Changing traffic waits until the gateways have the new table.
TRAFFIC = {
    "start_to_close_timeout": timedelta(seconds=60),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=10),
}
REQUEST = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=20),
}
# A long poll: heartbeats between chunks, so a cancel (a signal arrived) lands within seconds.
WATCH = {
    "start_to_close_timeout": timedelta(seconds=90),
    "heartbeat_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5)),
}
# A patch waits for a rolling replacement of every instance of one deployment.
PATCH = {
    "start_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=3),
}
