"""Load tests (locust) and the serving benchmark (bench_serving, compare) of hagmoe serve."""
