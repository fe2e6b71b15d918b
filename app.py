"""SpecPL Studio, the Gradio app (also the Hugging Face Space entry): ``python app.py``."""

from app.runtime.settings import AppSettings
from app.ui import build_demo, launch_options

settings = AppSettings.from_env()
demo = build_demo(settings)

if __name__ == "__main__":
    demo.queue().launch(**launch_options(settings))
