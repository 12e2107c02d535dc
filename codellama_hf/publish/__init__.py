"""Publishing: model cards written from what a model folder records, and a family pushed to the Hub.

Modules: `facts` (what a folder and its results say), `card` (the card, templates/model_card.md through
huggingface_hub.ModelCard), `staging` (push configuration, repositories assembled locally), `hub` (compare with the
Hub, upload, collection). The commands are codellama_hf.cli.card and codellama_hf.cli.push.
"""
