#!/usr/bin/env python3
"""Probe (issue #17, not product code): one causal-padded 3x3x3 WFVAE convolution written as Winograd F(M x M, 3x3)
on its spatial taps in plain ONNX ops, against ONNX Runtime's own `Conv`, on ort-cpu with 2 threads.

Winograd graph: spatial `Pad` -> input transform as a depthwise `Conv` ((M+2)^2 fixed kernels of (M+2) x (M+2), stride M) ->
channels to transform-major (`Reshape`/`Transpose`) -> the (M+2)^2 products and the 3 time taps as one grouped `Conv`
(groups (M+2)^2, kernel 3x1x1, weights `G g G^T` folded ahead) -> output transform as one `MatMul` by the fixed [M^2, (M+2)^2]
matrix -> tiles back to rows (`Reshape`/`Transpose`) -> bias. Prints the largest difference to the direct
convolution and the medians of 3 timed runs each.

Needs `pip install numpy onnx onnxruntime==1.32.0` (a venv). Usage: winograd_conv_probe.py CHANNELS SIZE [M]
(e.g. 640 64: `[640, 640, 3, 3, 3]` on 9 output frames of 64 x 64, the release decoder's largest convolution; M is
the output tile, 2 for F(2x2, 3x3) (default), 3 for F(3x3, 3x3) (points 0, +-1, 2; SIZE a multiple of 3) or 4 for
F(4x4, 3x3), whose transforms round more; a 4th argument `half`
takes F(4x4)'s interpolation points 0, +-1, +-1/2 instead of 0, +-1, +-2).
"""
import numpy as np, onnx, onnxruntime as ort, time, sys
from onnx import helper as h, TensorProto as TP, numpy_helper as nh
C=int(sys.argv[1]) if len(sys.argv)>1 else 640; T=11; H=W=int(sys.argv[2]) if len(sys.argv)>2 else 64
MT=int(sys.argv[3]) if len(sys.argv)>3 else 2; AL=MT+2
HALF=len(sys.argv)>4 and sys.argv[4]=='half'
rng=np.random.default_rng(0)
x=rng.standard_normal((1,C,T,H,W)).astype(np.float32)
g=(rng.standard_normal((C,C,3,3,3))/np.sqrt(C*27)).astype(np.float32)
bias=rng.standard_normal(C).astype(np.float32)*0.1
def model(nodes, inits, out_shape):
    gr=h.make_graph(nodes,'g',[h.make_tensor_value_info('x',TP.FLOAT,[1,C,T,H,W])],[h.make_tensor_value_info('y',TP.FLOAT,None)],[nh.from_array(a,n) for n,a in inits.items()])
    m=h.make_model(gr,opset_imports=[h.make_opsetid('',17)]); m.ir_version=9; return m.SerializeToString()
direct=model([h.make_node('Conv',['x','g','b'],['y'],pads=[0,1,1,0,1,1])],{'g':g,'b':bias},None)
if MT==2:
    BT=np.array([[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],np.float64)
    G=np.array([[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]],np.float64)
    AT=np.array([[1,1,1,0],[0,1,-1,-1]],np.float64)
elif MT==3 and HALF:
    BT=np.array([[0.5,-1,-0.5,1,0],[0,-0.5,0.5,1,0],[0,0.5,-1.5,1,0],[0,-1,0,1,0],[0,0.5,-1,-0.5,1]],np.float64)
    G=np.array([[2,0,0],[1,1,1],[-1/3,1/3,-1/3],[-8/3,-4/3,-2/3],[0,0,1]],np.float64)
    AT=np.array([[1,1,1,1,0],[0,1,-1,0.5,0],[0,1,1,0.25,1]],np.float64)
elif MT==3:
    BT=np.array([[2,-1,-2,1,0],[0,-2,-1,1,0],[0,2,-3,1,0],[0,-1,0,1,0],[0,2,-1,-2,1]],np.float64)
    G=np.array([[1/2,0,0],[-1/2,-1/2,-1/2],[-1/6,1/6,-1/6],[1/6,1/3,2/3],[0,0,1]],np.float64)
    AT=np.array([[1,1,1,1,0],[0,1,-1,2,0],[0,1,1,4,1]],np.float64)
elif HALF:
    BT=np.array([[1/4,0,-5/4,0,1,0],[0,-1/4,-1/4,1,1,0],[0,1/4,-1/4,-1,1,0],[0,-1/2,-1,1/2,1,0],[0,1/2,-1,-1/2,1,0],[0,1/4,0,-5/4,0,1]],np.float64)
    G=np.array([[4,0,0],[2/3,2/3,2/3],[2/3,-2/3,2/3],[-8/3,-4/3,-2/3],[-8/3,4/3,-2/3],[0,0,1]],np.float64)
    AT=np.array([[1,1,1,1,1,0],[0,1,-1,1/2,-1/2,0],[0,1,1,1/4,1/4,0],[0,1,-1,1/8,-1/8,1]],np.float64)
else:
    BT=np.array([[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]],np.float64)
    G=np.array([[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]],np.float64)
    AT=np.array([[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]],np.float64)
K2=AL*AL
kin=np.einsum('iu,jv->ijuv',BT,BT).reshape(K2,AL,AL)
win=np.tile(kin[None],(C,1,1,1)).reshape(K2*C,1,1,AL,AL).astype(np.float32)
U=np.einsum('ia,octab,jb->ijoct',G,g.astype(np.float64),G).reshape(K2,C,C,3)
wmid=U.reshape(K2*C,C,3,1,1).astype(np.float32)
aout=np.einsum('ai,bj->abij',AT,AT).reshape(MT*MT,K2).astype(np.float32)
Ht,Wt=H//MT,W//MT; To=T-2
nodes=[
 h.make_node('Pad',['x','pads'],['xp'],mode='constant'),
 h.make_node('Conv',['xp','win'],['v'],group=C,strides=[1,MT,MT]),
 h.make_node('Reshape',['v','s1'],['v6']), h.make_node('Transpose',['v6'],['vt'],perm=[0,2,1,3,4,5]),
 h.make_node('Reshape',['vt','s2'],['vk']),
 h.make_node('Conv',['vk','wmid'],['m'],group=K2),
 h.make_node('Reshape',['m','s3'],['m2']),
 h.make_node('MatMul',['aout','m2'],['yq']),
 h.make_node('Reshape',['yq','s4'],['y6']),
 h.make_node('Transpose',['y6'],['y7'],perm=[2,3,4,0,5,1]),
 h.make_node('Reshape',['y7','s5'],['y8']),
 h.make_node('Add',['y8','b5'],['y']),
]
inits={'pads':np.array([0,0,0,1,1,0,0,0,1,1],np.int64),'win':win,'wmid':wmid,'aout':aout,
 's1':np.array([1,C,K2,T,Ht,Wt],np.int64),'s2':np.array([1,K2*C,T,Ht,Wt],np.int64),'s3':np.array([K2,-1],np.int64),
 's4':np.array([MT,MT,C,To,Ht,Wt],np.int64),'s5':np.array([1,C,To,H,W],np.int64),'b5':bias.reshape(1,C,1,1,1)}
wino=model(nodes,inits,None)
so=ort.SessionOptions(); so.intra_op_num_threads=2; so.add_session_config_entry('session.force_spinning_stop','1')
sd=ort.InferenceSession(direct,so,providers=['CPUExecutionProvider']); sw=ort.InferenceSession(wino,so,providers=['CPUExecutionProvider'])
yd=sd.run(None,{'x':x})[0]; yw=sw.run(None,{'x':x})[0]
d=np.abs(yd-yw).max(); print('shape',yd.shape,'max|direct-wino|',d,'max|y|',np.abs(yd).max(), 'rel',d/np.abs(yd).max())
ts={'direct':[],'wino':[]}
for r in range(3):
    for n,s in (('direct',sd),('wino',sw)):
        t=time.perf_counter(); s.run(None,{'x':x}); ts[n].append(time.perf_counter()-t)
md,mw=np.median(ts['direct']),np.median(ts['wino'])
print('direct ms',[round(v*1e3) for v in ts['direct']],'wino ms',[round(v*1e3) for v in ts['wino']],'speedup %.2f'%(md/mw))
