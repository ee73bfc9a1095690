"""Every configuration field, documented once.

Recipes (`cfg_flip_large.py`, `tiny.py`, ...) call `get_config()` and change fields. Field
names and default values follow FLIP's JAX release (its `configs/default.py`), so that its
command lines and config files work unchanged; fields FLIP lacks are this project's
additions. Any field can be overridden on the command line, e.g.
`--config.batch_size=256 --config.model.model_img.mask_ratio=0.0`.

Where a default here differs from FLIP's, the comment says so with `(FLIP: ...)`. Values
that FLIP's model ignores (`clr.tau` while the temperature is learned) keep FLIP's meaning
too. FLIP's fields that this code accepts but needs no other value of are set together at
the end (`_accepted_from_flip`). Sizes, tower families and training loops that recipes
share are in configs/presets.py.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()

  # --- Data ---------------------------------------------------------------
  # Training pairs: a directory, a glob or a comma-separated list of files made by img2dataset,
  # either TFRecord shards (features `jpg`, `txt`, `key`) or webdataset `.tar` shards
  # (`KEY.jpg` + `KEY.txt` [+ `KEY.json`]). The format is chosen by what the path holds.
  config.laion_path = ''
  # Zero-shot evaluation set: a TFDS name, with or without a version (`imagenet2012`,
  # `imagenet2012:5.*.*`; split `eval_split`, read from $TFDS_DATA_DIR) or `folder:PATH`
  # with one sub-folder of images per class. Empty: no evaluation.
  config.eval_dataset = 'imagenet2012:5.*.*'
  config.eval_split = 'validation'
  # Class names for `eval_dataset`: empty takes them from the data (folder names with `_` read
  # as spaces; TFDS label names, or the curated CLIP names for ImageNet), `imagenet` takes the
  # curated CLIP ImageNet names, any other value is a JSON file holding a list of names in
  # label order.
  config.eval_classnames = ''
  # Prompt templates averaged into each class embedding: `short7` (FLIP's), `openai80`, or a
  # JSON file holding a list of templates with `{}` where the class name goes.
  config.eval_templates = 'short7'
  config.eval_batch_size = 256
  # Evaluate on at most this many images (0: all of them), drawn across the classes.
  config.eval_max_images = 0
  # More evaluations, by name (this project's; `eval_dataset` above defines one more, named
  # `zeroshot`). Each is a ConfigDict with
  #   type         zeroshot_classification | retrieval | linear_probe
  #   dataset      a TFDS name (`coco_captions` for retrieval), folder:PATH, or wds:PATH in
  #                CLIP_benchmark's layout (PATH/<split>/*.tar, classnames.txt and
  #                zeroshot_classification_templates.txt at PATH)
  #   split        default `test`
  #   every_steps  default eval_every_steps (0: only at the end)
  #   max_images   at most this many images (0: all), drawn across the classes
  #   classnames, templates   zero-shot, as eval_classnames / eval_templates; a wds: set
  #                brings its own unless they are set
  #   recall_k     retrieval: the K of recall@K, default (1, 5, 10)
  #   train_split, train_max_images, weight_decays, probe_steps   linear probe: the split
  #                its logistic regression is fitted on (`train`) and at most how many of
  #                its images (0: all), the weight decays swept on a held-out fifth of it
  #                (1e-6, 1e-4, 1e-2), and the optimiser steps per fit (500)
  # Results are written as `<name>/<metric>`. Example:
  #   config.evals.coco = dict(type='retrieval', dataset='wds:/data/wds_mscoco_captions')
  config.evals = ml_collections.ConfigDict()
  # Images per "virtual" epoch: epochs are counted in ImageNet-sized units, as in FLIP.
  config.samples_per_epoch = 1281167
  config.image_size = 224
  # Examples in the shuffle buffer (0: 16 x the host's batch, FLIP's
  # input_pipeline_laion.py:215).
  config.shuffle_buffer = 0
  # tf.data's parallel reads of shard files.
  config.num_parallel_reads = 16
  # At start-up each host tries this many records of its shards and stops, naming the files,
  # if none holds a decodable image (instead of skipping bad records forever).
  config.unreadable_records_limit = 1000

  # --- Schedule -----------------------------------------------------------
  # Steps are counted as FLIP counts them: samples_per_epoch // batch_size per virtual epoch,
  # int(num_epochs) epochs, and the warmup and cosine in those steps (trainer/optimizer.py).
  config.batch_size = 65536  # global batch over all hosts and devices (FLIP's default)
  config.learning_rate = 4e-6  # peak learning rate per 256 examples (scaled by batch_size/256)
  # > 0: the peak learning rate itself, whatever the batch (open_clip's and A-CLIP's --lr);
  # learning_rate is then ignored.
  config.abs_learning_rate = 0.0
  config.warmup_epochs = 40.0
  # > 0: warm up over this many steps instead, as open_clip does (its --warmup): step s runs
  # at peak * (s + 1) / warmup_steps, so the first step already learns; warmup_abs_lr and
  # warmup_epochs are ignored.
  config.warmup_steps = 0
  config.num_epochs = 10000.0  # ~32 passes over LAION-400M
  config.min_abs_lr = 0.0  # learning rate at the end of the cosine decay
  config.warmup_abs_lr = 0.0  # learning rate at step 0
  config.total_steps = 0  # > 0: train exactly this many steps, overriding num_epochs

  # --- Optimiser (AdamW) --------------------------------------------------
  config.opt = ml_collections.ConfigDict()
  config.opt.b1 = 0.9
  config.opt.b2 = 0.95
  config.opt.eps = 1e-8  # FLIP's (optax's default); open_clip's recipes use 1e-6
  config.opt.weight_decay = 0.2
  # Clip the global gradient norm to this value (0: no clipping, as FLIP).
  config.opt.clip_grad_norm = 0.0
  # The first moment's dtype for good: `bfloat16` halves its memory (the second moment stays
  # float32); empty: float32, as FLIP's code behaves (see opt_mu_dtype, FLIP's field, below).
  config.opt.mu_dtype = ''
  # Weight decay on the `decay_set` only (False: on every parameter).
  config.exclude_wd = True
  # Which parameters AdamW decays (the start-up log lists each group and its size):
  #   flip       every one but biases, norm scales and position tables: the class token
  #              and logit_scale are decayed (FLIP's code, not its comment)
  #   open_clip  kernels, the token table and the position tables, not biases, norm
  #              scales, the class token or logit_scale (open_clip's rule)
  #   aclip      open_clip's and the class token (A-CLIP's rule on timm's image tower)
  #   kernels    kernels and the token table only
  config.decay_set = 'flip'

  # --- Augmentation and tokenization --------------------------------------
  config.aug = ml_collections.ConfigDict()
  config.aug.area_range = (0.5, 1)  # RandomResizedCrop area fraction (open_clip's `scale`)
  config.aug.aspect_ratio_range = (3.0 / 4, 4.0 / 3.0)  # open_clip's `ratio`
  # Training crop: `v4` (FLIP's: PyTorch's RandomResizedCrop window, 10 tries, else a centre
  # crop of 224/256 of the shorter side, resized bicubic without antialiasing), `rrc`
  # (open_clip's: torchvision's RandomResizedCrop, whose fallback is the whole image cut to
  # the ratio range, resized bicubic with antialiasing as PIL does) or `vc` (the centre crop
  # of evaluation, no randomness).
  config.aug.crop_ver = 'v4'
  # Evaluation: the centre square of size / (size + eval_pad) of the shorter side, resized
  # to image_size (0: the whole centre square; 32 is the classic 224/256 crop).
  config.aug.eval_pad = 0
  config.aug.flip = True  # random horizontal flip
  # Per-channel statistics the towers normalise pixels with, on the 0-1 scale: ImageNet's
  # (FLIP's, the default) or OpenAI's for open_clip's models (presets.open_clip_towers).
  config.aug.pixel_mean = (0.485, 0.456, 0.406)
  config.aug.pixel_std = (0.229, 0.224, 0.225)
  config.aug.txt = ml_collections.ConfigDict()
  # `tf_bert`: BERT uncased WordPiece in the tf.data graph (FLIP's); `clip_bpe`: CLIP's byte
  # BPE with open_clip's text cleaning, <start_of_text> and <end_of_text> (open_clip's ids;
  # context 77, vocab 49408). [CLS]/[SEP] below are WordPiece's only.
  config.aug.txt.tokenizer = 'tf_bert'
  config.aug.txt.max_len = 32
  # Prepend [CLS], so that first-token pooling reads a dedicated token; FLIP's runs have none
  # and pool the first word piece.
  config.aug.txt.cls_token = False
  # Append [SEP] after the last word piece (this project's; FLIP never does).
  config.aug.txt.sep_token = False

  # --- Run control --------------------------------------------------------
  # Seeds: `seed_jax` for parameter initialisation, masks and dropout; `seed_tf` for the
  # data (shard order, shuffling, crops, flips).
  config.seed_jax = 0
  config.seed_tf = 0
  config.log_every_steps = 200
  config.eval_every_steps = 0  # 0: only at the end (if eval_at_end)
  # A checkpoint every this many virtual epochs (0: none but the last, if save_at_end) ...
  config.save_every_epochs = 100.0
  # ... or, when > 0, every this many steps instead.
  config.checkpoint_every_steps = 0
  # Pictures of the masked training images to TensorBoard every this many virtual epochs
  # (and at the end).
  config.vis_every_epochs = 20.0
  # Also run every evaluation after the first virtual epoch and every vis_every_epochs, as
  # FLIP's train.py evaluates (FLIP's recipes set it: presets.flip_run_control). The rows
  # are written at the step that ends the epoch; FLIP writes them one step later.
  config.eval_every_vis_epochs = False
  config.eval_at_end = True
  config.save_at_end = True
  # The newest N checkpoints are kept; 0 keeps every one (FLIP's recipes, as its t5x
  # checkpointer deletes none).
  config.keep_checkpoints = 3
  config.eval_only = False  # load pretrain_dir (or the workdir's latest checkpoint), evaluate, exit
  # Weights to start from, without their optimiser state: this project's checkpoints (a
  # workdir, its checkpoints/ folder or one step's folder) or a FLIP release as it comes
  # (t5x: a folder of checkpoint_<step>/ or one of them). Empty: none.
  config.pretrain_dir = ''
  # Resume from this step's checkpoint instead of the newest (0: the newest), e.g. when the
  # newest is damaged. Once it is restored, the workdir's later checkpoints are moved aside
  # to WORKDIR/checkpoints_after_STEP/ (logged); eval_only and another run's resume_dir
  # leave every checkpoint where it is.
  config.resume_step = 0
  # Resume from another run's checkpoints instead of the workdir's own (empty: none); read
  # only, and an error when it holds none.
  config.resume_dir = ''
  # A resume whose config changes what is trained (model.*, aug.*, batch_size, image_size,
  # laion_path, samples_per_epoch, the seeds, shuffle_buffer, num_parallel_reads: each
  # changes the data stream) is refused with the list of changes unless
  # this is True; other changes (steps, schedule, evaluations, logging) are logged and
  # recorded in WORKDIR/config_changes.jsonl either way. Likewise eval_only of a checkpoint
  # trained with another model, and pretrain_dir's open_clip folder whose
  # open_clip_config.json describes another model than this config.
  config.accept_config_changes = False

  # --- Partitioning -------------------------------------------------------
  config.partitioning = ml_collections.ConfigDict()
  # Size of the `model` mesh axis (tensor parallel over heads and MLP width); the other
  # devices form the `data` axis.
  config.partitioning.num_partitions = 1
  # Shard the optimiser state over the `data` axis along its `embed` axis even where the
  # weights are replicated (ZeRO-1; FLIP's large and huge recipes set it); with unrolled
  # layers the gradients are then reduce-scattered onto it (trainer/gradient_scatter.py).
  config.partitioning.partition_states = False
  # dp: weights replicated over `data`; fsdp: weights and optimiser state sharded over it
  # (ZeRO-3).
  config.partitioning.strategy = 'dp'
  # Logical axis -> mesh axis (None: replicated); fsdp puts `embed` on `data`.
  config.partitioning.rules = (('embed', None), ('mlp', 'model'), ('heads', 'model'),
                               ('kv', None), ('vocab', None), ('joint', None))
  # Split each batch into this many micro-batches whose activations live one at a time.
  # The contrastive loss stays exact over the whole batch: embeddings are computed first
  # without gradient, then each micro-batch is re-run with its share of the gradient.
  config.grad_accum_steps = 1

  # --- Model (FLIP's: ViT-L/16 image tower, 12-layer text tower) ---------
  config.model = ml_collections.ConfigDict()
  config.model.model_img = get_config_img()
  config.model.model_txt = get_config_txt()
  config.model.clr = ml_collections.ConfigDict()
  # Temperature: fixed at `tau` when tau_learnable is False. A learned one starts at
  # `tau_init` (FLIP hard-codes 0.07 and ignores `tau`) and logit_scale = log(1 / temperature)
  # is clipped to [0, log(max_logit_scale)].
  config.model.clr.tau = 0.01
  config.model.clr.tau_learnable = True
  config.model.clr.tau_init = 0.07
  config.model.clr.max_logit_scale = 100.0
  # Where logit_scale is held in [0, log(max_logit_scale)]: `forward` clips it in the loss
  # (FLIP; no gradient flows beyond the bounds), `after_update` clamps the parameter after
  # each optimiser step (open_clip, A-CLIP).
  config.model.clr.logit_scale_clamp = 'forward'
  config.model.clr.proj_dim_out = 768  # shared embedding width
  config.model.clr.proj_out_bias = False  # biases of the two output projections
  # Image embedding: the mean of the encoded tokens (True) or the class token (False).
  config.model.clr.img_avg_token = True
  # With img_avg_token: the class token is averaged in too (FLIP), or only patch tokens.
  config.model.clr.img_avg_with_cls = True
  # Text embedding: the mean of the tokens (True; padding included unless
  # model_txt.mask_padding) or the first token (False).
  config.model.clr.txt_avg_token = False
  # Softmax loss only. > 0: form the B x B logits this many rows at a time (must divide
  # batch_size), so that a huge global batch never materialises them whole.
  config.model.clr.loss_chunk = 0
  # The image-text objective: `softmax` (CLIP's InfoNCE over the global batch, FLIP's) or
  # `sigmoid` (SigLIP's: each pair a binary classification with a learned bias; over several
  # devices its blocks go round the data axis, so no device holds the B x B logits).
  config.model.loss = 'softmax'
  # The sigmoid loss's initial logit scale t (SigLIP's 10, a temperature of 0.1, in place of
  # clr.tau_init; clipped and clamped as clr says) and its logit bias (SigLIP's -10).
  config.model.sigmoid = ml_collections.ConfigDict()
  config.model.sigmoid.scale_init = 10.0
  config.model.sigmoid.bias_init = -10.0
  # A-CLIP's auxiliary losses (attentive policy; 0 turns a loss off): online-to-EMA
  # distillation of a projector + predictor, and SimCLR between the masked views.
  config.model.aclip = ml_collections.ConfigDict()
  config.model.aclip.distill_weight = 0.0
  config.model.aclip.simclr_weight = 0.0
  config.model.aclip.simclr_temperature = 0.1
  config.model.aclip.head_dim = 256  # width of the projector and predictor outputs
  # The MLP's nonlinearity in both towers: `gelu_tanh` (FLIP's, Flax's tanh approximation),
  # `gelu` (exact, open_clip's) or `quick_gelu` (x * sigmoid(1.702 x), OpenAI's weights).
  config.model.activation = 'gelu_tanh'
  # LayerNorm epsilon in both towers (FLIP's 1e-6; open_clip's 1e-5).
  config.model.norm_eps = 1e-6
  # Computation dtype of both towers; parameters always stay float32.
  config.model.dtype = 'float32'  # or 'bfloat16'
  # One nn.scan over each tower's blocks (parameters stacked on a `layers` axis): compiles
  # one block, and remat saves exactly what its policy says. False unrolls the blocks
  # (block_00, ...); checkpoints differ in layout. Unset (the default): scanned where either
  # tower's blocks are rematerialised, unrolled where neither is: without remat a scan, its
  # loop unrolled or not, keeps more than the same layers unrolled (L/16 on v3-256: 22.2
  # against 14.1 GiB per core, docs/pod-slices.md); with remat it keeps less.
  config.model.scan_layers = config_dict.placeholder(bool)
  # Without remat, the scan's loop unrolled: the layers scheduled and fused as one program
  # (parameters stay stacked). remat keeps the loop, which keeps its saving.
  config.model.scan_unroll = True
  # How attention is computed: `auto` (cuDNN's fused attention on a GPU in bfloat16, the
  # written-out one on a CPU, XLA's jax.nn.dot_product_attention elsewhere), `cudnn`, `xla`,
  # or `einsum` (the logits and softmax written out: the reference, and what dropout on the
  # attention weights always uses).
  config.model.attention = 'auto'
  # Each LayerNorm and the MLP's activation computed again in the backward pass from their
  # inputs, rather than keeping autodiff's intermediates (models/transformer.py, layer_norm):
  # the same numbers, about a fifth less memory (B/16, bfloat16, batch 32 on a CPU: 9.36
  # against 11.17 GiB), a few elementwise ops twice (2-3% of the demo's step on a CPU).
  # Unset (the default): on a GPU only. A TPU compiler rematerialises a program that does
  # not fit by itself, which the recomputation's fences stop (L/16 on v3-256: 30.4 GiB,
  # refused, against 14.1 without).
  config.model.recompute_elementwise = config_dict.placeholder(bool)
  _accepted_from_flip(config)
  return config


def _accepted_from_flip(config):
  """FLIP's fields that this code accepts, so that FLIP's config files and command lines
  run unchanged, but that need no other value than the one set here (the start-up checks
  refuse one that would change nothing or cannot be done)."""
  # FLIP caches its evaluation set in memory; tf.data reads it once per evaluation here.
  config.cache = True
  # A PyTorch seed: nothing here uses PyTorch (seed_jax and seed_tf are the seeds).
  config.seed_pt = 0
  # The optimiser: AdamW only, as in FLIP.
  config.opt_type = 'adamw'
  # FLIP concatenates all parameters into one vector for its optimiser, a t5x memory trick;
  # optax updates each parameter in place, with the same result.
  config.opt.flatten_params = False
  # The dtype FLIP's AdamW creates the first moment in. FLIP never casts it back after an
  # update (its utils/adamw.py:143 is commented out), so from the first step on it is
  # float32 whatever this says, and so it is here: `bfloat16` gives FLIP's float32 numbers
  # (opt.mu_dtype keeps a bfloat16 moment for good).
  config.opt_mu_dtype = 'float32'
  # The contrastive loss is the only objective, in FLIP and here: True only.
  config.model.clr.clr_loss = True
  # The modules' names; parameters are `image/...` and `text/...` here, and FLIP's
  # checkpoints are mapped by name when loaded.
  config.model.model_img.name = 'img_encoder'
  config.model.model_txt.name = 'txt_encoder'
  # Text tokens are never masked and the text position embedding is learned, as FLIP's
  # model refuses other values too: 0.0 and False only.
  config.model.model_txt.mask_ratio = 0.0
  config.model.model_txt.sincos = False


def _transformer(config, width, heads, layers):
  config.transformer.mlp_dim = width * 4
  config.transformer.num_heads = heads
  config.transformer.num_layers = layers
  # Dropout on each branch's output and after the MLP's activation; on the attention
  # weights; and drop-path (stochastic depth) growing linearly from 0 at the first block to
  # this rate at the last, all in training only.
  config.transformer.attention_dropout_rate = 0.0
  config.transformer.dropout_rate = 0.0
  config.transformer.droppath_rate = 0.0
  # Rematerialisation per block: none | minimal (save only weight matmuls' outputs) |
  # full (recompute every block) | actcp (FLIP's name for full).
  config.transformer.remat_policy = 'none'


def get_config_img():
  config = ml_collections.ConfigDict()
  # Fraction of patches dropped in training: K = max(1, floor(N * (1 - mask_ratio))) kept.
  config.mask_ratio = 0.5
  # Position embedding: fixed 2-D sin-cos (True, FLIP) or learned (False).
  config.sincos = True
  config.patches = ml_collections.ConfigDict({'size': (16, 16)})
  # Never update the patch embedding (A-CLIP's image tower, after MoCo v3): no gradient, no
  # decay.
  config.freeze_patch_embedding = False
  # A bias in the patch embedding (FLIP's; open_clip's conv has none).
  config.patch_bias = True
  # A learned position for the class token too, row 0 of the table (open_clip's; needs
  # sincos=False). FLIP's class token has no position.
  config.cls_position = False
  # A LayerNorm over the tokens before the encoder (open_clip's ln_pre; FLIP has none).
  config.pre_norm = False
  config.hidden_size = 1024
  config.transformer = ml_collections.ConfigDict()
  _transformer(config, 1024, 16, 24)
  config.masking = ml_collections.ConfigDict()
  # Which patches are kept: none | random (FLIP) | gaussian (GLIP) | cluster (Masking
  # Clusters) | attentive (A-CLIP). mask_ratio 0 keeps every patch whatever the policy.
  config.masking.policy = 'random'
  # Mask at evaluation too ("masked inference"); by default evaluation sees every patch.
  config.masking.at_eval = False
  # Masked views per image, each contrasted with the same caption; losses averaged.
  config.masking.num_views = 1
  # With several views: `shared` (one crop, masked several ways) or `separate` (A-CLIP's:
  # each view its own random crop, and the attentive teacher sees one crop covering them
  # all, its attention cut and resized onto each view's grid before blocks are chosen).
  config.masking.view_crops = 'shared'
  # gaussian: variance of the centred normal on [-1, 1] grid coordinates (GLIP's sigma).
  config.masking.sigma = 0.2
  # cluster: share of patches drawn as anchors, and the similarity (Pearson correlation of
  # pixels) above which a patch joins an anchor's cluster and is masked.
  config.masking.anchor_ratio = 0.03
  config.masking.threshold = 0.5
  # cluster: at start-up, bisect `threshold` on the first batch so that the mean masked
  # share is target_mask_ratio (logged).
  config.masking.calibrate = False
  config.masking.target_mask_ratio = 0.5
  # cluster: the encoder sees K = floor(N * (1 - min_mask_ratio)) tokens, padding included.
  config.masking.min_mask_ratio = 0.3
  # attentive: pooling block side over the patch grid, and the sampling temperature
  # (0: hard top-k; > 0: Gumbel top-k, so views differ).
  config.masking.block = 2
  config.masking.temperature = 0.0
  # attentive: EMA teacher momentum, raised from this value to 1 on a cosine over training.
  config.masking.ema_momentum = 0.996
  return config


def get_config_txt():
  config = ml_collections.ConfigDict()
  config.vocab_size = 30523  # BERT's 30,522 WordPieces + 1 out-of-vocabulary id
  config.hidden_size = 768
  config.transformer = ml_collections.ConfigDict()
  _transformer(config, 768, 12, 12)
  # Keep padding out of attention and pooling. FLIP's text tower attends to every token,
  # padding included (False), and its released weights need that to give its embeddings.
  config.mask_padding = False
  # Each token attends only to itself and those before it (open_clip's text tower).
  config.causal = False
  # Text embedding: empty lets model.clr.txt_avg_token choose (FLIP's field: `mean` or
  # `first`); `argmax` reads the token with the largest id, open_clip's end of text.
  config.pool = ''
  # Text-token reduction in training (masking/text.py): `none`, or `truncation`, `random`,
  # `block`, `syntax` (CLIPA's) or `frequency` (CLIPF's), each keeping `num_tokens` tokens
  # of a caption, its start and end tokens included. Evaluation reads the whole text.
  config.masking = ml_collections.ConfigDict()
  config.masking.policy = 'none'
  config.masking.num_tokens = 8
  # Frequency reduction: CLIPF's threshold t in max(0, 1 - sqrt(t / f)), the captions whose
  # tokens are counted for f (first ones of the shards; counts kept in the workdir), and the
  # count under which a token is discarded first (CLIPF's 5).
  config.masking.frequency_threshold = 1e-7
  config.masking.frequency_captions = 100_000
  config.masking.frequency_min_count = 5
  return config
