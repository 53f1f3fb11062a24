"""One module per task, each exposing ``run(cfg: AppConfig, ctx: JobContext)``: orchestration only."""
