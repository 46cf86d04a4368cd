"""Helpers shared by the benchmark scripts (bench/*.py put bench/ on sys.path by being run from it).

    perf_analyzer.py  install perf_analyzer, its command line per transport, its CSV report
    scrape.py         a running server's counters (statistics extension, else Prometheus)
    servers.py        waiting for readiness, free ports, the naive server
    machine.py        CPU, memory, load, versions and source revision for the report
    report.py         number formats, verdicts, and replacing a marked section of RESULTS.md
"""
