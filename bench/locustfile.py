"""Locust load test for model-runtime (or any KServe V2 server): the package's V2 HTTP and gRPC users.

    locust -f bench/locustfile.py V2HttpUser --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000
    locust -f bench/locustfile.py V2GrpcUser --headless -u 8 -r 8 -t 30s --host 127.0.0.1:8001

Name a user class to run only that one; with none named both run, the gRPC one against --grpc-host
(from --host http://H:8000 it derives H:8001, Triton's convention; any other HTTP --host without
--grpc-host is refused at start, saying to pass it):

    locust -f bench/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000
    locust -f bench/locustfile.py --headless -u 8 -r 8 -t 30s --host http://h:9000 --grpc-host h:9001

Model and inputs: --model mlp, --batch-size 4, --inputs-file samples.json, --tensor-format binary,
--user-rate 10 (see `locust -f bench/locustfile.py --help`, section "Custom arguments", or
runtime/loadtest/users.py). Needs the `loadtest` extra: pip install -e '.[loadtest]'.
"""
from runtime.loadtest.users import V2GrpcUser, V2HttpUser

__all__ = ["V2GrpcUser", "V2HttpUser"]
