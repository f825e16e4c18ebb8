/* Icicle zoom for the profile (the live /profile page and the performance
 * report, which inlines this file): click a frame to zoom onto it, the top
 * row to zoom out. */
(function(){
  var svg=document.getElementById('profile'); if(!svg) return;
  var W=+svg.getAttribute('data-width');
  svg.addEventListener('click',function(ev){
    var g=ev.target.closest('g[data-x]'); if(!g) return;
    var x0=+g.getAttribute('data-x'), w0=+g.getAttribute('data-w'), d0=+g.getAttribute('data-d');
    svg.querySelectorAll('g[data-x]').forEach(function(n){
      var x=+n.getAttribute('data-x'), w=+n.getAttribute('data-w'), d=+n.getAttribute('data-d');
      var inside = d<d0 || (x>=x0-1e-9 && x+w<=x0+w0+1e-9);
      n.style.display = inside ? '' : 'none';
      var r=n.querySelector('rect'), t=n.querySelector('text');
      var nx = d<d0 ? 0 : (x-x0)/w0*W, nw = d<d0 ? W : w/w0*W;
      r.setAttribute('x',nx); r.setAttribute('width',Math.max(nw-0.5,0.5));
      if(t){t.setAttribute('x',nx+3); t.style.display = nw>40 ? '' : 'none';}
    });
  });
})();
