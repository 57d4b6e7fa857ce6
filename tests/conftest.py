import os

# Tests never use the network: huggingface_hub reads this once, at import.
os.environ['HF_HUB_OFFLINE'] = '1'
