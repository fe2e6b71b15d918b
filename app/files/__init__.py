"""User files in and out: zip archives checked before a byte is written (`archives`), datasets
(`uploads`), model bundles (`bundles`) and the Hugging Face Hub (`hub`)."""
