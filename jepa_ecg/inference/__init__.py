"""Using trained models: encoder and classifier files, run folders, streaming over files.

    encoder.py       `Encoder` (preprocess, tokens, embed) + the encoder directory
    classifier.py    `Classifier` (predict) + the classifier directory
    runs.py          `load_encoder` / `load_classifier` from files or run folders; export
    stream.py        windows, fixed-size batches across records, pooling, file streaming
    torch_import.py  official PyTorch checkpoints -> encoder directory

    from jepa_ecg import inference
    enc = inference.load_encoder('runs/xs')          # a workdir or an encoder directory
    emb = enc.embed(signal, fs=500, leads=['I', 'II', ...])
"""

from jepa_ecg.inference.classifier import Classifier, read_classifier, save_classifier
from jepa_ecg.inference.encoder import Embeddings, Encoder, read_encoder, save_encoder
from jepa_ecg.inference.runs import export_encoder, load_classifier, load_encoder

__all__ = ['Classifier', 'Embeddings', 'Encoder', 'export_encoder', 'load_classifier',
           'load_encoder', 'read_classifier', 'read_encoder', 'save_classifier',
           'save_encoder']
