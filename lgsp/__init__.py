"""lgsp: the pipeline runner, the DAG factory and the `lgsp` CLI."""
