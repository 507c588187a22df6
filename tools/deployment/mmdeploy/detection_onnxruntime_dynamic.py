# mmdeploy deploy config: an mmdet detector (e.g. Cascade Mask R-CNN + PeLK,
# deploy form) to onnxruntime. The batch axis is dynamic; H and W are those
# of the image given to torch2onnx: the structured PeLK graph is built for
# the exported feature-map sizes, so export at the size you will run (the
# test pipeline's padded size). Self-contained: mmdeploy's wheel ships no
# configs. See docs/deployment.md ("Deploying with mmdeploy").
_base_ = ['./_base_/onnx_config.py']
onnx_config = dict(
    output_names=['dets', 'labels', 'masks'],
    dynamic_axes={
        'input': {
            0: 'batch'
        },
        'dets': {
            0: 'batch',
            1: 'num_dets'
        },
        'labels': {
            0: 'batch',
            1: 'num_dets'
        },
        'masks': {
            0: 'batch',
            1: 'num_dets'
        }
    })
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
        export_postprocess_mask=False))
