"""SpecPL Studio's Gradio app. Everything here calls the `specpl` library; nothing here is imported by it.

- `app.ui`: the page (a header, then each tab) and its launch options;
- `app.tabs`: one module per tab, its layout and its handlers, and what the tabs share (`app.tabs.shared`);
- `app.studio`: `Studio`, what every tab's handlers share (settings, jobs, models, who is asking);
- `app.runtime`: settings, identity, the job queue (`jobs`) and what trains its runs (`runners`,
  `worker`), the warm models, what this machine can load (backbones, decomposers), served assets;
- `app.files`: user files in and out (checked archives, datasets, bundles, the Hub);
- `app.views`: what the tabs show, computed from runs and the library (progress, reports, analysis,
  the run form, the training plan, classification) and the Gradio pieces several tabs draw.
"""
