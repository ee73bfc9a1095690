"""open_clip's own code, run in a process of its own, as the reference for the tests.

torch, torchvision and open_clip are imported here and nowhere in the test process: imported
after TensorFlow, open_clip's imports crash the process. Each command reads and writes numpy
files:

  python tests/open_clip_reference.py make --model=ViT-B-16 --out=DIR
      a randomly initialised open_clip model with every parameter perturbed (so that each
      gain and bias matters), saved as DIR/epoch_1.pt (a training checkpoint, DDP's module.
      prefixes) and as DIR/hf/ (open_clip_config.json + open_clip_model.safetensors)
  python tests/open_clip_reference.py embed --model local-dir:DIR... --inputs=IN.npz \
      --out OUT.npz...
      L2-normalised image and text embeddings of IN's `pixels` (normalised, [B, H, W, 3]) and
      `tokens` ([N, L] ids), by each model in turn (one process: open_clip imports slowly),
      and the model's logit_scale and logit_bias (NaN where it has none)
  python tests/open_clip_reference.py tokenize --captions=CAPTIONS.json --out=OUT.npz
      open_clip's token ids for each caption ([N, 77])
  python tests/open_clip_reference.py optimise --model local-dir:DIR --grads=GRADS.safetensors \
      --settings=JSON --out OUT.safetensors
      the model after `steps` steps of open_clip_train's AdamW, schedule and logit_scale
      clamp, each with the same gradients (open_clip's names)
  python tests/open_clip_reference.py siglip --inputs=IN.npz --out OUT.npz
      open_clip's SigLipLoss on one process of IN's `zimg`, `ztxt`, `logit_scale` (its log)
      and `logit_bias`, and the loss's gradients with respect to each (torch's autograd)
  python tests/open_clip_reference.py clip_benchmark eval ARGS...
      CLIP_benchmark's own command line. Its top-k accuracy converts a one-element array to a
      float, which numpy 2.4 refuses (CLIP_benchmark issue 147, open): the same count is
      taken as a scalar; nothing else is changed.
"""

import argparse
import json
import os
import sys

import numpy as np


def make(args):
  args.model, args.out = args.model[0], args.out[0]
  import open_clip  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(args.seed)
  model = open_clip.create_model(args.model, pretrained=None)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.02 * torch.randn_like(param))
  state = model.state_dict()
  os.makedirs(os.path.join(args.out, 'hf'), exist_ok=True)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  torch.save({'epoch': 1, 'name': 'reference', 'optimizer': optimizer.state_dict(),
              'state_dict': {f'module.{k}': v for k, v in state.items()}},
             os.path.join(args.out, 'epoch_1.pt'))
  save_file({k: v.contiguous() for k, v in state.items()},
            os.path.join(args.out, 'hf', 'open_clip_model.safetensors'))
  config = {'model_cfg': open_clip.get_model_config(args.model),
            'preprocess_cfg': {'mean': list(open_clip.OPENAI_DATASET_MEAN),
                               'std': list(open_clip.OPENAI_DATASET_STD),
                               'size': 224, 'interpolation': 'bicubic',
                               'resize_mode': 'shortest'}}
  with open(os.path.join(args.out, 'hf', 'open_clip_config.json'), 'w') as f:
    json.dump(config, f)


def embed(args):
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  inputs = np.load(args.inputs)
  for name, out in zip(args.model, args.out, strict=True):
    model = open_clip.create_model(name, pretrained=None)
    model.eval()
    with torch.no_grad():
      pixels = torch.from_numpy(inputs['pixels']).permute(0, 3, 1, 2).contiguous()
      images = model.encode_image(pixels, normalize=True).numpy()
      texts = model.encode_text(torch.from_numpy(inputs['tokens']).long(),
                                normalize=True).numpy()
      bias = model.logit_bias.item() if model.logit_bias is not None else np.nan
    np.savez(out, images=images, texts=texts, logit_scale=model.logit_scale.item(),
             logit_bias=bias)


def siglip(args):
  from open_clip.loss import SigLipLoss  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  inputs = np.load(args.inputs)
  tensors = {name: torch.tensor(inputs[name], dtype=torch.float64, requires_grad=True)
             for name in ('zimg', 'ztxt', 'logit_scale', 'logit_bias')}
  loss = SigLipLoss()(tensors['zimg'], tensors['ztxt'], tensors['logit_scale'].exp(),
                      tensors['logit_bias'])
  loss.backward()
  np.savez(args.out[0], loss=loss.item(),
           **{f'{name}_grad': t.grad.numpy() for name, t in tensors.items()})


def tokenize(args):
  args.out = args.out[0]
  import open_clip  # pylint: disable=g-import-not-at-top
  with open(args.captions) as f:
    captions = json.load(f)
  tokenizer = open_clip.get_tokenizer(args.model[0])
  np.savez(args.out, ids=tokenizer(captions).numpy())


def _top_k_accuracy(logits, target, topk=(1,)):
  """CLIP_benchmark's accuracy(): the share of rows whose target is among the top k."""
  predicted = logits.topk(max(topk), 1, True, True)[1].t()
  correct = predicted.eq(target.view(1, -1).expand_as(predicted))
  return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def clip_benchmark(argv):
  from clip_benchmark import cli  # pylint: disable=g-import-not-at-top
  from clip_benchmark.metrics import zeroshot_classification  # pylint: disable=g-import-not-at-top
  zeroshot_classification.accuracy = _top_k_accuracy
  sys.argv = ['clip_benchmark'] + argv
  cli.main()


def optimise(args):
  """open_clip_train's optimiser set-up, schedule and clamp (open_clip_torch 3.3.0): steps of
  the model in --model, every step with the gradients in --grads."""
  import math  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  from open_clip_train.scheduler import cosine_lr  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file, save_file  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  settings = json.loads(args.settings)
  model = open_clip.create_model(args.model[0], pretrained=None)
  grads = load_file(args.grads)
  named_parameters = list(model.named_parameters())
  # open_clip_train/main.py:335-351: the two parameter groups and AdamW.
  exclude = (lambda n, p: p.ndim < 2 or 'bn' in n or 'ln' in n or 'bias' in n
             or 'logit_scale' in n)
  include = lambda n, p: not exclude(n, p)
  gain_or_bias_params = [p for n, p in named_parameters if exclude(n, p) and p.requires_grad]
  rest_params = [p for n, p in named_parameters if include(n, p) and p.requires_grad]
  optimizer = torch.optim.AdamW(
      [{'params': gain_or_bias_params, 'weight_decay': 0.},
       {'params': rest_params, 'weight_decay': settings['wd']}],
      lr=settings['lr'], betas=(settings['beta1'], settings['beta2']), eps=settings['eps'])
  # open_clip_train/main.py:409-411 and train.py:86-89: the scheduler sets step s's rate.
  scheduler = cosine_lr(optimizer, settings['lr'], settings['warmup'], settings['total_steps'])
  for step in range(settings['steps']):
    scheduler(step)
    for name, param in named_parameters:
      param.grad = grads[name].reshape(param.shape).clone()
    optimizer.step()
    with torch.no_grad():  # open_clip_train/train.py:187-189
      model.logit_scale.clamp_(0, math.log(100))
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out[0])


def main():
  if sys.argv[1:2] == ['clip_benchmark']:
    clip_benchmark(sys.argv[2:])
    return
  parser = argparse.ArgumentParser()
  parser.add_argument('command', choices=('make', 'embed', 'tokenize', 'optimise', 'siglip'))
  parser.add_argument('--model', nargs='+', default=['ViT-B-16'])
  parser.add_argument('--out', nargs='+', required=True)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--inputs')
  parser.add_argument('--captions')
  parser.add_argument('--grads')
  parser.add_argument('--settings')
  args = parser.parse_args()
  {'make': make, 'embed': embed, 'tokenize': tokenize, 'optimise': optimise,
   'siglip': siglip}[args.command](args)


if __name__ == '__main__':
  main()
