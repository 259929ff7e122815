"""Running the series headless: papermill stages in order (`pipeline`), the status line (`status_line`),
`accelerate launch` of one stage on several GPUs (`launch`) and the `ftlab` command line (`cli`).

The top layer: it may import every package.
"""
