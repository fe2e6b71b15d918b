"""What the tabs show, computed from runs and the library: a run's progress and report, band and
counterfactual views, the run form (`advanced`, and its Gradio controls in `form`), the training
plan, classification results, and the Gradio pieces more than one tab draws (`widgets`)."""
