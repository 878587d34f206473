"""Exporting a trained model to ONNX or OpenVINO, and running an exported model.

``graph``: the whole detector as one ``nn.Module``, from the resized image to the map and
score; ``writer``: ``uadp export``; ``runtime``: ONNX Runtime / OpenVINO behind
:class:`uadp.api.Model`.
"""
