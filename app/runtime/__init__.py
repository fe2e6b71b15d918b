"""What the app runs on: its settings, who is asking, the training queue (`jobs`) and the runner
seam behind it (`runners`, `worker`, `zerogpu`), the models kept warm in the app process, which
backbones and decomposers this machine can load, and Gradio's front-end files served from memory."""
