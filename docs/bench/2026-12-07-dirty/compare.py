# ./compare.py DIR...: per run, blackout, pre-copy rounds (MiB), frozen dump (KiB), freeze_dump, lazy_servers, restore, jump_to_agent, new_kernel_boot, pre_copy (ms), the page server index (ms, from the console log)
import json,sys,re,glob
for d in sys.argv[1:]:
    r=json.load(open(d+"/results.json"))
    for x in r:
        ph=x['phases']
        log=open(glob.glob(f"{d}/console-{x['method']}-{x['dataset_mib']}-{x['run']}.log")[0],errors='replace').read()
        idx=re.findall(r"images indexed in (\d+) ms",log)
        print(d.split('/')[-1], x['dataset_mib'], x['run'], 'ok' if x['ok'] else 'FAIL', 'blk',x['blackout_ms'], 'pre',[b>>20 for b in x.get('pre_copy_bytes',[])], 'frozen',x.get('frozen_dump_bytes',0)>>10,'KiB',
              'fd',ph.get('freeze_dump'),'ls',ph.get('lazy_servers'),'rs',ph.get('restore'),'jta',ph.get('jump_to_agent'),'nkb',ph.get('new_kernel_boot'),'pc',ph.get('pre_copy'),'idx',idx)
