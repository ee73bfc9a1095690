"""A-CLIP's attentive masks of two views (microsoft/A-CLIP, models.py), restated in torch.

A-CLIP's release cannot be installed (it is a training script); its two functions are
restated here line for line and run in a process of their own (torch is never imported in
the test process):

  python tests/aclip_reference.py --inputs=IN.npz --out=OUT.npz

IN holds `attention` [B, 196] (the EMA teacher's class-token attention on its crop, 14 x 14),
`views` [B, V, 4] and `teacher` [B, 4] (top, left, height, width in the image's pixels). OUT
holds `kept` bool [V, B, 196]: the patches each view keeps.
"""

import argparse

import numpy as np


def get_att_mask(attention, ratio=0.5):
  """models.py:24-43: 2 x 2 blocks by bilinear 14 -> 7, the top int(49 * ratio) + 1 blocks
  kept; True where a patch is masked."""
  import torch  # pylint: disable=g-import-not-at-top
  bs = attention.shape[0]
  masks = torch.ones((bs, 49), dtype=torch.bool)
  attention = attention.reshape((-1, 14, 14))
  attention = torch.nn.functional.interpolate(attention.unsqueeze(1), (7, 7),
                                              mode='bilinear').squeeze()
  attention = attention.reshape(bs, -1)
  n = int(attention.shape[1] * ratio)
  reservation = torch.argsort(attention, descending=True)
  reservation = reservation[:, :n + 1]
  masks = masks.scatter_(1, reservation, False)
  full_mask = torch.zeros((bs, 14, 14), dtype=torch.bool)
  full_mask[:, 0::2, 0::2] = masks.reshape(bs, 7, 7)
  full_mask[:, 0::2, 1::2] = masks.reshape(bs, 7, 7)
  full_mask[:, 1::2, 0::2] = masks.reshape(bs, 7, 7)
  full_mask[:, 1::2, 1::2] = masks.reshape(bs, 7, 7)
  return full_mask.reshape(bs, -1)


def get_mask(mask, positions, e_positions):
  """models.py:448-467 (ACLIP.get_mask): the teacher's map resized bilinearly to its crop's
  pixels, the view's window cut out, resized bilinearly back to 14 x 14."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional as F_t  # pylint: disable=g-import-not-at-top
  mask = mask.reshape((-1, 14, 14))
  cmask = []
  for i in range(mask.shape[0]):
    m = mask[i].unsqueeze(0).unsqueeze(0)
    o_pos, e_pos = positions[i], e_positions[i]
    m = torch.nn.functional.interpolate(m, (int(e_pos[2]), int(e_pos[3])), mode='bilinear')
    top = int(o_pos[0] - e_pos[0])
    left = int(o_pos[1] - e_pos[1])
    m = F_t.crop(m, top, left, int(o_pos[2]), int(o_pos[3]))
    m = torch.nn.functional.interpolate(m, (14, 14), mode='bilinear')
    cmask.append(m)
  cmask = torch.stack(cmask).squeeze()
  return cmask.reshape(mask.shape[0], -1)


def main():
  import torch  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  inputs = np.load(args.inputs)
  attention = torch.from_numpy(inputs['attention'].astype(np.float32))
  teacher = torch.from_numpy(inputs['teacher'])
  kept, mapped = [], []
  # models.py:486-491 (ACLIP.forward): each view's map, then its mask.
  for v in range(inputs['views'].shape[1]):
    attention_map = get_mask(attention, torch.from_numpy(inputs['views'][:, v]), teacher)
    mapped.append(attention_map.numpy())
    kept.append(~get_att_mask(attention_map).numpy())
  np.savez(args.out, kept=np.stack(kept), mapped=np.stack(mapped))


if __name__ == '__main__':
  main()
