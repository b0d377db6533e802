"""Sets of 3 runs of the bf16 check (plan-bf16.md) that pass it: mean Δ Dice ≥ +2 and mean Δ accuracy ≥ 0 over
SupOnly, each run its own metrics.json (Hermes at its estimate, SupOnly at ½). From the repository root:
    python docs/study-h163/pass_bf16.py > docs/study-h163/bf16/pass.txt
"""
import itertools
import json
import os
D='docs/study-h163/bf16'
pairs=[]
for sub in 'ABC':
    for s in range(3):
        h=f'{D}/{sub}-hermesbf-s{s}/metrics.json'; p=f'{D}/{sub}-suponlybf-s{s}/metrics.json'
        if os.path.exists(h) and os.path.exists(p):
            H=json.load(open(h)); S=json.load(open(p))
            pairs.append((sub+str(s),100*(H['dice_mean']-S['dice_mean']),100*(H['accuracy']-S['accuracy'])))
ok=tot=0; fd=fa=0
for c in itertools.combinations(pairs,3):
    d=sum(x[1] for x in c)/3; a=sum(x[2] for x in c)/3
    tot+=1; ok+= (d>=2 and a>=0); fd+=d<2; fa+=a<0
print(len(pairs),'runs;',ok,'of',tot,'sets of 3 pass; Dice half fails',fd,'accuracy half fails',fa)
for x in pairs: print(x[0], f'{x[1]:+.2f} {x[2]:+.2f}')
