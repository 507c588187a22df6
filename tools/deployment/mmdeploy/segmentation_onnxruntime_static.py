# mmdeploy deploy config: an mmseg segmentor (e.g. UperNet + PeLK, deploy
# form) to onnxruntime, static input shape (the image given to torch2onnx
# fixes H and W). Self-contained: mmdeploy's wheel ships no configs.
# Use it with a model config whose backbone is the deploy form
# (model.backbone.deploy=True) and a folded checkpoint; see
# docs/deployment.md ("Deploying with mmdeploy").
_base_ = ['./_base_/onnx_config.py']
# with_argmax=False: the output is the logits (N, num_classes, H, W) at the
# input size; True (mmdeploy's default) gives the class map (N, 1, H, W).
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=False)
