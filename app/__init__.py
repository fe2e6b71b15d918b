"""SpecPL Studio's Gradio app: the Blocks UI (`app.ui`), a training job manager (`app.jobs`) that
runs each training in its own worker process (`app.worker`), and checked upload handling
(`app.uploads`). Everything here calls the `specpl` library; nothing here is imported by it."""
